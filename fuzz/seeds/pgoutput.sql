-- Changes whose pgoutput messages seed the pgoutput fuzz targets; run by
-- capture-pgoutput.sh on a throwaway database with wal_level = logical.
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE orders (id int PRIMARY KEY, note text, total numeric);
CREATE SCHEMA app;
CREATE TABLE app.kinds (
    id int8 PRIMARY KEY, i2 int2, i4 int4, n numeric, f4 float4, f8 float8, b bool,
    t text, vc varchar(10), j json, jb jsonb, ts timestamp, tstz timestamptz, d date,
    tm time, ttz timetz, iv interval, u uuid, by bytea, ta text[], ia int4[][],
    ip inet, m money, e mood, password text);
ALTER TABLE app.kinds REPLICA IDENTITY FULL;
CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE PUBLICATION fuzz_seed FOR TABLE orders, app.kinds, docs;
SELECT 1 FROM pg_create_logical_replication_slot('fuzz_seed', 'pgoutput');

INSERT INTO orders VALUES (42, 'ünïcödé 🦀', 120.50), (43, NULL, 'NaN');
UPDATE orders SET note = 'paid' WHERE id = 42;
UPDATE orders SET id = 44 WHERE id = 43;
DELETE FROM orders WHERE id = 44;
INSERT INTO app.kinds VALUES (9223372036854775807, 32767, -2147483648,
    12345678901234.123456, '-0', 1e308, true, 'héllo "q" e' || chr(769) || ' ' || chr(8238) || 'rtl',
    'v', '{"a": [1, 2], "a": "\u0000"}', '{"k": {"n": 1.10}}', '2026-11-22 04:20:00.123456',
    '2026-11-22 06:20:00.5+02', '4713-01-01 BC', '24:00:00', '04:05:06+05:30',
    '1 year 2 mons -3 days 04:05:06.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff00',
    '{"a,b","\"q\"",NULL,"","back\\slash"}', '[0:1][1:2]={{1,2},{3,NULL}}', '::1/128',
    '-1234.56', 'happy', 'hunter2');
UPDATE app.kinds SET b = false, tstz = 'infinity', ts = '-infinity';
INSERT INTO docs VALUES (1, 'big', repeat('x', 5000));
UPDATE docs SET title = 'still big';
SELECT 1 FROM pg_logical_emit_message(true, 'walhook', 'transactional');
SELECT 1 FROM pg_logical_emit_message(false, 'walhook', 'heartbeat');
ALTER TABLE orders ADD COLUMN tags text[];
INSERT INTO orders VALUES (45, 'after ddl', 1, '{x}');
TRUNCATE orders, docs RESTART IDENTITY CASCADE;
SELECT 1 FROM pg_replication_origin_create('node_a');
BEGIN;
SELECT 1 FROM pg_replication_origin_session_setup('node_a');
SELECT 1 FROM pg_replication_origin_xact_setup('0/ABCD', now());
INSERT INTO orders VALUES (46, 'from origin', 2, '{}');
COMMIT;
