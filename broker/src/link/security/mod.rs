//! Who may do what: device and service-client authentication (`auth`), the SPEC §3
//! topic permissions (`acl`), and the SPEC §4 payload envelope (`crypto`) with the
//! per-connection device keys (`sealing`).

pub(crate) mod acl;
pub(crate) mod auth;
pub mod crypto;
pub(crate) mod sealing;
