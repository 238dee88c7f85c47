//! The pieces of loadtest that other harnesses of the workspace share (the
//! `chaos` crate): one Phoenix V2 WebSocket client and the sequence-numbered
//! payload it checks ([`conn`]), latency histograms ([`stats`]) and what
//! /proc says about a pod ([`procfs`]). The load generator itself is the
//! `loadtest` binary (src/main.rs), which uses them the same way.

pub mod conn;
pub mod procfs;
pub mod stats;
