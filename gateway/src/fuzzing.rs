//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`,
//! off by default): thin wrappers over crate-private parsers, so the targets
//! exercise the code that runs and the public API stays as it is. Not an
//! API; see docs/fuzzing.md.

pub use crate::transport::fuzzing::{
    longpoll_body, longpoll_line, Frame, FrameReader, RelayMessage, Signer, Stop,
};

use crate::socket::Assigns;

/// A `{claim}` template (`socket_id`) filled from claims, as `auth.rs` does.
pub fn render(template: &str, claims: &Assigns) -> Option<String> {
    crate::auth::render(template, claims)
}

/// A claim as the text templates and topic placeholders compare.
pub fn claim_str(v: &serde_json::Value) -> Option<String> {
    crate::auth::claim_str(v)
}
