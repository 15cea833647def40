//! Integration tests: one binary, so the crate compiles once. Each test starts the real server
//! on 127.0.0.1:0 with its own temporary database and talks HTTP to it.

mod access;
mod accounts;
mod binary;
mod cluster;
mod concurrency;
mod console;
mod copy;
mod crash;
mod currencies;
mod documents;
mod edge;
mod framing;
mod helpers;
mod holds;
mod hostile;
mod layering;
mod migration;
mod operations;
mod properties;
mod reversals;
mod snapshots;
mod staff;
mod wallet;
mod withdrawals;
