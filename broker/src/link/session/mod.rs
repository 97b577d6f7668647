//! Sessions: the live-connection table (`live`: listing, kick, takeover, command
//! mailboxes); persistent sessions, their redb queues and expiry (`store`); the parked
//! sessions' filters by level (`index`); what the router still owes a connected
//! persistent session (`ledger`) and the connection's side of it (`owed`); resuming a
//! session on a new connection (`resume`); keeping a connected one in step and parking
//! it (`live_sync`); stored MQTT 5 properties (`props`); and the
//! group-committed writer of every session queue (`writer`); a connection's subscriptions by filter (`sub_table`).

pub(crate) mod index;
pub(crate) mod ledger;
pub(crate) mod live;
pub(crate) mod live_sync;
pub(crate) mod owed;
pub(crate) mod props;
pub(crate) mod resume;
pub(crate) mod store;
pub(crate) mod sub_table;
pub(crate) mod writer;
