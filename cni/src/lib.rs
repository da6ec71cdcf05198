//! `fabric-cni`: the CNI plugin of the fabric overlay network.
//!
//! The plugin is a thin translator. The node daemon, fabricd, owns every attachment;
//! the plugin reads the runtime's request as CNI 1.1.0 defines it, forwards it to
//! fabricd over a unix socket and prints fabricd's answer, or a CNI error, on stdout.
//!
//! - [`env`] parses the `CNI_*` environment variables,
//! - [`config`] parses the network configuration on stdin,
//! - [`api`] is the wire protocol to fabricd,
//! - [`version`] and [`result`] shape what the runtime reads back,
//! - [`plugin`] ties them together in [`plugin::run`].
//!
//! No input may make the plugin panic: every failure becomes a CNI error.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod api;
pub mod config;
pub mod env;
pub mod plugin;
pub mod result;
pub mod version;
