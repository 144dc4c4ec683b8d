//! Cairn's wire protocol: the generated protobuf/gRPC code (`pb`), the identifiers
//! every process agrees on (`ids`), validated names (`name`) and the one encoding of
//! errors in a gRPC status (`status`), the one retry helper (`retry`), and what
//! a tier policy selects (`tier`). Nothing else in Cairn builds raw generated
//! types by hand without going through the checks here. It is also the base
//! every process shares for operations: the `/metrics` and `/health` endpoint
//! (`metrics`).

pub mod channel;
pub mod ids;
pub mod metrics;
pub mod name;
pub mod retry;
pub mod status;
pub mod tier;

/// Generated protobuf and tonic code.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("cairn.v1");
}

/// Largest gRPC message any Cairn service accepts (a 4 MiB block plus headers).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
