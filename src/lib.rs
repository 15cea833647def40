//! wallet: a self-hosted wallet ledger. See ARCHITECTURE.md for the map and the invariants.
//!
//! HTTP edge (`http`) → use cases (`service`, `accounts`, `ledger`) → storage (`db`), with
//! background work in `jobs` and value types in `domain`.

pub mod accounts;
pub mod clock;
pub mod config;
pub mod copy;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod jobs;
pub mod ledger;
pub mod log;
pub mod metrics;
pub mod service;
pub mod startup;
pub mod store;
pub mod sys;
pub mod tools;
pub mod verify;

pub use startup::App;
