-- Typical and edge values of every type family, as walhook's replication
-- session renders them; make-seeds.sh turns each row into a seed of the
-- value fuzz target (the first column is the type's index in its TYPES list).
SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres';
SET extra_float_digits = 3; SET bytea_output = 'hex';
SELECT i, v FROM (VALUES
  -- bool::text is 'true'; the output function (what pgoutput sends) prints 't'.
  (0, 't'), (0, 'f'),
  (1, '\x00ff10'::bytea::text), (1, '\x'::bytea::text),
  (2, 9223372036854775807::int8::text), (2, (-9223372036854775807 - 1)::int8::text),
  (3, (-32768)::int2::text), (4, 2147483647::int4::text), (5, 4294967295::oid::text),
  (6, '{"a": [1, 2], "a": "\u0000", "n": 1.10}'::json::text),
  (7, '-0'::float4::text), (7, '3.4028235e38'::float4::text), (7, 'NaN'::float4::text),
  (8, '1e308'::float8::text), (8, '5e-324'::float8::text), (8, '-Infinity'::float8::text),
  (9, '-92233720368547758.08'::money::text),
  (10, '4713-01-01 BC'::date::text), (10, '5874897-12-31'::date::text), (10, 'infinity'::date::text),
  (11, '24:00:00'::time::text), (11, '04:05:06.789'::time::text),
  (12, '294276-12-31 23:59:59.999999'::timestamp::text), (12, '0001-01-01 00:00:00 BC'::timestamp::text),
  (13, '2026-11-22 04:20:00.123456+00'::timestamptz::text), (13, '-infinity'::timestamptz::text),
  (13, '1883-11-18 12:00:00.25-04:56:02'), (13, '2026-11-22 04:20:00+05:30'),
  (14, '1 year 2 mons -3 days 04:05:06.5'::interval::text),
  (15, '04:05:06+05:30'::timetz::text), (15, '04:05:06-00:19:32'),
  (16, '12345678901234.123456'::numeric::text), (16, 'NaN'::numeric::text), (16, '-Infinity'::numeric::text),
  (16, '0.' || repeat('7', 100)),
  (17, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid::text),
  (18, '{"k": {"n": 1.10}, "a": [true, null, "\u00e9"]}'::jsonb::text), (18, repeat('[', 100) || repeat(']', 100)),
  (19, 'héllo "q" e' || chr(769) || ' ' || chr(8238) || 'rtl 🦀 ' || chr(65533)),
  (20, '{t,f,NULL}'::bool[]::text), (21, '{"\\x0a0b","\\x",NULL}'::bytea[]::text),
  (22, '{1,NULL}'::int2[]::text), (23, '[0:1][5:6]={{1,2},{3,NULL}}'::int4[]::text), (23, '{}'::int4[]::text),
  (24, '{9223372036854775807}'::int8[]::text),
  (25, '{"a,b","\"q\"",NULL,"","NULL","back\\slash","{x}",🦀}'::text[]::text),
  (26, '{-0,1e+308,NaN}'::float8[]::text), (27, '{1.50,NaN,NULL,-Infinity}'::numeric[]::text),
  (28, '{"2026-11-22 04:20:00",infinity}'::timestamp[]::text),
  (29, '{"2026-11-22 04:20:00+00","0001-01-01 00:00:00+00 BC"}'::timestamptz[]::text),
  (30, '{04:05:06+02}'::timetz[]::text), (31, '{2026-11-22,-infinity}'::date[]::text),
  (32, ARRAY['{"a": 1}'::json, '[1, "\u0000"]'::json]::text), (33, ARRAY['{"a": 1}'::jsonb, NULL]::text),
  (34, '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'::uuid[]::text), (35, '{$1.50,-$2.00}'::money[]::text),
  (36, 'custom enum label'), (37, '{"[1,2)"}')
) AS seeds (i, v);
