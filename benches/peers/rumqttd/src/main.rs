//! Bare rumqttd 0.20: the crate's own `Broker` with a 3.1.1 and an MQTT 5 TCP listener
//! and a WebSocket listener (3.1.1 only in 0.20), anonymous, dynamic filters on.
//!
//! `bare-rumqttd [v4 port] [v5 port] [ws port]` (default 31883 31884 31901, on 127.0.0.1).

fn main() {
    let mut ports = std::env::args().skip(1).map(|p| p.parse::<u16>().expect("port"));
    let v4 = ports.next().unwrap_or(31883);
    let v5 = ports.next().unwrap_or(31884);
    let ws = ports.next().unwrap_or(31901);
    let connections = r#"
    connection_timeout_ms = 60000
    max_payload_size = 262144
    max_inflight_count = 100
    dynamic_filters = true"#;
    let listener = |kind: &str, port: u16| {
        format!(
            "[{kind}.1]\nname = \"{kind}-1\"\nlisten = \"127.0.0.1:{port}\"\n\
             next_connection_delay_ms = 1\n[{kind}.1.connections]{connections}\n"
        )
    };
    let cfg = format!(
        "id = 0\n[router]\nid = 0\nmax_connections = 1000\nmax_outgoing_packet_count = 200\n\
         max_segment_size = 1048576\nmax_segment_count = 4\n{}{}{}",
        listener("v4", v4),
        listener("v5", v5),
        listener("ws", ws),
    );
    let config: rumqttd::Config = toml::from_str(&cfg).expect("config");
    rumqttd::Broker::new(config).start().expect("start");
}
