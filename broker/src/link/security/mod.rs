//! Who may do what: device and service-client authentication (`auth`), the SPEC §3
//! topic permissions (`acl`), and the SPEC §4 payload envelope (`crypto`) with the
//! device key generations (`keyring`), the 0x02 replay window (`replay`) and the
//! per-connection device keys (`sealing`); the failure backoff against password guessing
//! (`backoff`), the bounds on password hashing (`slow_checks`) and the recent refused
//! attempts (`refusals`).

pub(crate) mod acl;
pub(crate) mod auth;
pub(crate) mod backoff;
pub mod crypto;
pub(crate) mod keyring;
pub(crate) mod refusals;
pub(crate) mod replay;
pub(crate) mod sealing;
pub(crate) mod slow_checks;
