use super::*;

fn hook(url: &str, events: Option<&[&str]>) -> WebhookConfig {
    WebhookConfig {
        url: url.into(),
        secret: "s".into(),
        events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
    }
}

#[test]
fn filters_match_exact_prefix_and_any() {
    let f =
        |ps: &[&str]| EventFilter::new(Some(&ps.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
    let cmd = f(&["command.*"]);
    assert!(cmd.matches("command.completed"));
    assert!(!cmd.matches("command"));
    assert!(!cmd.matches("commands.x"));
    assert!(!cmd.matches("device.online"));
    let exact = f(&["device.online", "telemetry"]);
    assert!(exact.matches("device.online") && exact.matches("telemetry"));
    assert!(!exact.matches("device.offline"));
    assert!(f(&["*"]).matches("anything"));
    assert!(EventFilter::new(None).matches("anything"));
    // Patterns validate() rejects match nothing.
    assert!(!f(&["comm*"]).matches("command.completed"));
    // Naming a type is an exact pattern, not a prefix or `*`.
    assert!(exact.names("telemetry"));
    assert!(!f(&["*"]).names("telemetry") && !EventFilter::new(None).names("telemetry"));
    assert!(!f(&["telemetry.*"]).names("telemetry"));
}

#[test]
fn config_validation_names_the_problem() {
    assert_eq!(
        hook(
            "http://127.0.0.1:9000/hooks",
            Some(&["command.*", "device.online", "*"])
        )
        .validate(),
        Ok(())
    );
    assert_eq!(
        hook("https://example.com/x?token=1", None).validate(),
        Ok(())
    );
    for bad in [
        "ftp://h/x",
        "127.0.0.1:9000/x",
        "http://",
        "not a url",
        "/path",
    ] {
        assert!(
            matches!(
                hook(bad, None).validate(),
                Err(WebhookConfigError::Url { .. })
            ),
            "{bad}"
        );
    }
    let mut h = hook("http://h/x", None);
    h.secret.clear();
    assert!(matches!(
        h.validate(),
        Err(WebhookConfigError::EmptySecret { .. })
    ));
    assert!(matches!(
        hook("http://h/x", Some(&[])).validate(),
        Err(WebhookConfigError::NoEvents { .. })
    ));
    for bad in ["comm*", "", ".*", "a..b", "device.*.x", "device online"] {
        let err = hook("http://h/x", Some(&[bad])).validate().unwrap_err();
        assert!(matches!(err, WebhookConfigError::Pattern { .. }), "{bad}");
        assert!(err.to_string().contains("webhooks.events"), "{err}");
    }
    let dup = [
        hook("http://h/x", None),
        hook("http://h/y", None),
        hook("http://h/x", None),
    ];
    assert!(matches!(
        validate_webhooks(&dup),
        Err(WebhookConfigError::Duplicate { .. })
    ));
    assert_eq!(validate_webhooks(&dup[..2]), Ok(()));
}

#[test]
fn debug_hides_the_secret() {
    let h = WebhookConfig {
        secret: "hunter2".into(),
        ..hook("http://u:pw@h/x?k=v", None)
    };
    let s = format!("{h:?}");
    assert!(
        !s.contains("hunter2") && !s.contains("pw") && !s.contains("k=v"),
        "{s}"
    );
}

#[test]
fn known_instants() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(rfc3339_ms(1_709_294_400_123), "2024-03-01T12:00:00.123Z");
    assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
}

#[test]
fn parsed_filters_name_the_bad_pattern() {
    let f = EventFilter::parse(["device.online", "command.*"]).unwrap();
    assert!(f.matches("device.online") && f.matches("command.failed"));
    assert!(!f.matches("device.offline"));
    assert!(EventFilter::parse(["*"]).unwrap().matches("x"));
    assert!(EventFilter::any().matches("x"));
    let err = EventFilter::parse(["device.online", "comm*"]).unwrap_err();
    assert_eq!(err.pattern, "comm*");
}

#[tokio::test]
async fn resume_replays_after_the_last_id_then_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
    let outbox = Outbox::open(Arc::new(db), Default::default()).unwrap();
    let options = WebhookOptions {
        replay_capacity: 4,
        ..WebhookOptions::default()
    };
    // Before anything is emitted, an id from an earlier run is a gap.
    let bus = EventBus::with_options(outbox, vec![], options);
    let before = bus.resume(Some("0000000000000001aaaaaaaa"));
    assert_eq!(
        before.gap,
        Some(Gap {
            last_event_id: "0000000000000001aaaaaaaa".into(),
            oldest_available: None
        })
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(bus.emit("x.y", None, serde_json::json!(i)).await.id);
    }
    let mut r = bus.resume(Some(&ids[0]));
    assert!(r.gap.is_none());
    let replayed: Vec<_> = r.replay.iter().map(|e| e.id.clone()).collect();
    assert_eq!(replayed, ids[1..]);
    let next = bus.emit("x.y", None, serde_json::json!(3)).await;
    assert_eq!(r.live.recv().await.unwrap(), next);
    assert!(
        r.live.try_recv().is_err(),
        "nothing replayed comes again live"
    );
    ids.push(next.id);
    assert!(bus.resume(None).replay.is_empty());
    assert!(bus.resume(Some(&ids[3])).replay.is_empty());

    // Two more push ids[0] and ids[1] out of the ring of 4.
    for i in 4..6 {
        ids.push(bus.emit("x.y", None, serde_json::json!(i)).await.id);
    }
    let r = bus.resume(Some(&ids[0]));
    assert_eq!(
        r.gap,
        Some(Gap {
            last_event_id: ids[0].clone(),
            oldest_available: Some(ids[2].clone())
        })
    );
    assert_eq!(r.replay.len(), 4);
    // The last id that fell out is not a gap: nothing after it was lost.
    let r = bus.resume(Some(&ids[1]));
    assert!(r.gap.is_none());
    assert_eq!(r.replay.first().map(|e| &e.id), Some(&ids[2]));
    // An unknown id newer than everything replays nothing.
    let r = bus.resume(Some("ffffffffffffffffffffffff"));
    assert!(r.gap.is_none() && r.replay.is_empty());
}

#[tokio::test]
async fn ids_are_unique_and_ordered_and_events_go_live() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
    let outbox = Outbox::open(Arc::new(db), Default::default()).unwrap();
    let bus = EventBus::new(outbox, vec![]);
    let mut live = bus.subscribe();
    let dev: DeviceId = "dev-1".parse().unwrap();
    let mut ids = Vec::new();
    for i in 0..50 {
        let e = bus
            .emit("device.online", Some(&dev), serde_json::json!({"i": i}))
            .await;
        assert_eq!(e.id.len(), 24);
        assert!(e.id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(live.recv().await.unwrap(), e);
        ids.push(e.id);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    // Ordered unless the random counter wrapped within this run (1 in ~10^8).
    assert_eq!(sorted.len(), ids.len());
    let e = bus.emit("alarm.raised", None, serde_json::json!({})).await;
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["type"], "alarm.raised");
    assert!(json["device_id"].is_null());
    assert_eq!(json.as_object().unwrap().len(), 5);
    assert!(e.at.ends_with('Z') && e.at.len() == 24, "{}", e.at);
}

#[tokio::test]
async fn emit_many_queues_every_matching_event_in_order_and_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(redb::Database::create(dir.path().join("t.redb")).unwrap());
    let outbox = Outbox::open(db.clone(), Default::default()).unwrap();
    let hooks = vec![
        hook("http://127.0.0.1:1/all", None),
        hook("http://127.0.0.1:1/cmd", Some(&["command.*"])),
    ];
    let bus = EventBus::new(outbox, hooks);
    let mut live = bus.subscribe();
    let dev: DeviceId = "dev-1".parse().unwrap();
    let raw = |v: serde_json::Value| serde_json::value::to_raw_value(&v).unwrap();
    let sent = bus
        .emit_many(vec![
            (
                "command.completed",
                Some(dev.clone()),
                raw(serde_json::json!({"n": 1})),
            ),
            (
                "device.online",
                Some(dev.clone()),
                raw(serde_json::json!({"n": 2})),
            ),
            ("command.failed", None, raw(serde_json::json!({"n": 3}))),
        ])
        .await;
    assert_eq!(sent.len(), 3);
    for e in &sent {
        assert_eq!(&live.recv().await.unwrap(), e);
    }
    let (queued, _) = outbox::list(&db, None, None, 100).unwrap();
    let per_url = |url: &str| -> Vec<String> {
        queued
            .iter()
            .filter(|d| d.url == url)
            .map(|d| d.event_type.clone())
            .collect()
    };
    assert_eq!(
        per_url("http://127.0.0.1:1/all"),
        ["command.completed", "device.online", "command.failed"]
    );
    assert_eq!(
        per_url("http://127.0.0.1:1/cmd"),
        ["command.completed", "command.failed"]
    );
}
