//! `fleetmq publish TOPIC PAYLOAD`: publish one message as the broker
//! (`POST /api/v1/publish`). For a device topic the broker seals it for the device like
//! everything else it sends there.

use http::Method;
use serde_json::json;

use super::client::{Admin, REQUEST_TIMEOUT};
use super::device_config::read_config_arg;
use super::error::CliError;
use super::output::{self, outln};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The topic (no wildcards)
    topic: String,
    /// The payload, sent as this text byte for byte; `@FILE` for a file's text, `@-` for
    /// standard input; empty when left out (retained, that clears the topic's retained message)
    #[arg(value_name = "PAYLOAD")]
    payload: Option<String>,
    /// QoS 0, 1 or 2
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Keep it as the topic's retained message
    #[arg(long)]
    retain: bool,
}

pub async fn run(admin: &Admin, json: bool, args: PublishArgs) -> Result<(), CliError> {
    let payload = match &args.payload {
        Some(arg) => read_config_arg(arg).await?,
        None => String::new(),
    };
    // Always a JSON string: the API sends a string's text as it is, so `{"a": 1}`
    // keeps its spacing instead of being re-serialized.
    let body = json!({
        "topic": args.topic,
        "payload": payload,
        "qos": args.qos,
        "retain": args.retain,
    });
    let reply = admin
        .call(
            Method::POST,
            "/api/v1/publish",
            Some(body.to_string().into_bytes()),
            &[],
            REQUEST_TIMEOUT,
        )
        .await?;
    if json {
        output::print_raw(&reply);
    } else {
        let retained = if args.retain { ", retained" } else { "" };
        outln!(
            "published {} bytes to {} (qos {}{retained})",
            payload.len(),
            args.topic,
            args.qos
        );
    }
    Ok(())
}
