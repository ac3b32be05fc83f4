//! walhook: PostgreSQL logical replication → form events → signed webhooks.
//!
//! # Architecture
//!
//! One direction, no back-and-forth:
//!
//! ```text
//! PostgreSQL ──pgoutput──▶ source ──Message──▶ event (mapping) ──Event──▶ store ──▶ delivery ──HTTP──▶ endpoints
//! ```
//!
//! - [`source`]: replication connection, slot/publication management,
//!   preflight checks, the pure pgoutput decoder and the type → JSON mapping.
//! - [`event`]: the event JSON contract and the pure table → form mapping.
//! - [`store`]: the durable log (SQLite, WAL mode, `synchronous=FULL`) and
//!   per-subscription delivery state. The only place that decides which LSN
//!   may be acknowledged to Postgres.
//! - [`delivery`]: one worker per subscription over its own cursor: render,
//!   sign, send, retry, dead-letter.
//! - [`app`]: wires the pieces, owns the tasks and the shutdown.
//! - [`config`]: TOML → validated config.
//! - [`demo`]: a throwaway PostgreSQL and receiver for `walhook demo`.
//!
//! # Guarantees
//!
//! 1. No loss: the confirmed flush LSN sent to Postgres never passes an event
//!    that is not fsynced in the store.
//! 2. At-least-once with stable ids (`<commit LSN as 16 hex>-<index>`).
//! 3. Commit order per subscription.
//! 4. Isolation: a failing endpoint never holds back the slot or another
//!    subscription.

pub mod admin;
pub mod app;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod event;
pub mod exit;
pub mod failpoint;
pub mod health;
pub mod metrics;
pub mod source;
pub mod status;
pub mod store;
