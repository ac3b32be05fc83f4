-- Runs once when the compose PostgreSQL starts with an empty data directory.
-- The application's table, a least-privilege role for walhook, and the
-- publication (created here by the table's owner, so walhook needs no
-- ownership: source.manage_publication = false in walhook.toml).
CREATE TABLE orders (
  id         bigserial PRIMARY KEY,
  customer   text          NOT NULL,
  total      numeric(10,2) NOT NULL,
  status     text          NOT NULL DEFAULT 'new',
  created_at timestamptz   NOT NULL DEFAULT now()
);
CREATE ROLE walhook LOGIN REPLICATION PASSWORD 'walhook-demo-password';
GRANT SELECT ON orders TO walhook;
CREATE PUBLICATION walhook FOR TABLE orders;
