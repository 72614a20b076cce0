//! Integration tests: the real daemon (in-process, or the real binary where it matters) against
//! fake-google on a loopback port and a real SQLite file in a temporary folder.

mod admin;
mod admission;
mod api;
mod api_writes;
mod backend;
mod cli;
mod crash;
mod ctl_output;
mod faults;
mod feed_race;
mod fidelity;
mod helpers;
mod intake;
mod lifecycle;
mod log_scan;
mod openapi;
mod ops;
mod risc;
mod s3;
mod scale_out;
mod secrets;
mod spread;
mod sync;
mod webhooks;
