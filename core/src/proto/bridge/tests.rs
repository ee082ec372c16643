//! The mapping, action by action and method by method (DESIGN §9).

#![allow(clippy::type_complexity)]

use super::*;
use crate::proto::app::{AppProtocol, InboxEntry, MessageId, PeerBook, Relation, Target};
use crate::proto::config::Config;
use crate::proto::identity::Keypair;
use crate::proto::record::{PeerRecord, RecordBody};
use serde_json::json;

const NOW: Timestamp = Timestamp(1_000_000);

fn me() -> PeerId {
    Keypair::derive(1, "me").peer_id()
}

fn peer(i: u64) -> PeerId {
    Keypair::derive(i + 10, "peer").peer_id()
}

fn book() -> PeerBook {
    let config = Config {
        partners: vec![peer(1), peer(2)],
        trusted_peers: vec![peer(3)],
        blocked_peers: vec![peer(4)],
        ..Config::default()
    };
    PeerBook::from_config(&config)
}

fn bridge() -> Bridge {
    Bridge::new(BridgeConfig::default(), me())
}

fn b64(v: &Value) -> String {
    data_encoding::BASE64.encode(v.to_string().as_bytes())
}

/// A `propalgation_event` from an app, with names for the codes.
fn propagation(action: Value, datatype: Value, inner_dt: Value, inner: Value) -> Vec<u8> {
    let prop = json!({ "DataType": inner_dt, "Action": action, "Payload": b64(&inner) });
    json!({ "FromApp": "oc-catalog", "Datatype": datatype, "Method": 8, "User": "alice", "Groups": ["g1"], "Payload": b64(&prop) })
        .to_string()
        .into_bytes()
}

fn actions(b: &mut Bridge) -> Vec<BridgeAction> {
    std::iter::from_fn(|| b.poll_action()).collect()
}

fn sends(actions: &[BridgeAction]) -> Vec<(Target, AppProtocol, Option<i64>, String, Vec<u8>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            BridgeAction::Command(Command::Send { message: m, .. }) => {
                Some((m.to.clone(), m.protocol, m.datatype, m.user.clone(), m.payload.clone()))
            }
            _ => None,
        })
        .collect()
}

fn publications(actions: &[BridgeAction]) -> Vec<(String, Value, Option<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            BridgeAction::Publish(p) => {
                Some((p.subject.clone(), serde_json::from_slice(&p.payload).unwrap(), p.msg_id.clone()))
            }
            _ => None,
        })
        .collect()
}

fn inner_payload(v: &Value) -> Value {
    let b = data_encoding::BASE64.decode(v["Payload"].as_str().unwrap().as_bytes()).unwrap();
    serde_json::from_slice(&b).unwrap()
}

fn entry(protocol: AppProtocol, sender: PeerId, seq: u64, user: &str, payload: Value) -> InboxEntry {
    let payload = if payload.is_null() { Vec::new() } else { payload.to_string().into_bytes() };
    InboxEntry {
        id: MessageId { sender, epoch: 7, seq },
        from_did: None,
        protocol,
        datatype: Some(1),
        user: user.into(),
        payload,
        received_at: NOW,
    }
}

#[test]
fn create_update_delete_go_to_every_partner_by_number_and_by_name() {
    let codes = Codes::default();
    for (name, protocol) in
        [("PB_CREATE", AppProtocol::Create), ("PB_UPDATE", AppProtocol::Update), ("PB_DELETE", AppProtocol::Delete)]
    {
        for action in [json!(name), json!(codes.actions.code(name).unwrap()), json!(name.to_lowercase())] {
            let mut b = bridge();
            let msg = propagation(action, json!(1), json!("DATA_RESOURCE"), json!({"name": "dataset"}));
            assert_eq!(b.on_nats("propalgation_event", &msg, &book(), NOW), Ok(Handled::Done));
            let s = sends(&actions(&mut b));
            let mut to: Vec<Target> = s.iter().map(|x| x.0.clone()).collect();
            to.sort();
            let mut partners = vec![Target::Peer(peer(1)), Target::Peer(peer(2))];
            partners.sort();
            assert_eq!(to, partners);
            for (_, p, dt, user, payload) in &s {
                assert_eq!(*p, protocol);
                assert_eq!(*dt, Some(1));
                assert_eq!(user, "alice");
                assert_eq!(serde_json::from_slice::<Value>(payload).unwrap(), json!({"name": "dataset"}));
            }
        }
    }
}

#[test]
fn keys_are_matched_case_insensitively_and_our_own_messages_are_ignored() {
    let mut b = bridge();
    let prop = json!({ "datatype": 1, "ACTION": "PB_CREATE", "payload": b64(&json!({"x": 1})) });
    let msg = json!({ "fromapp": "oc-catalog", "USER": "bob", "payload": b64(&prop) }).to_string();
    assert_eq!(b.on_nats("propalgation_event", msg.as_bytes(), &book(), NOW), Ok(Handled::Done));
    let s = sends(&actions(&mut b));
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].3, "bob");
    let ours = json!({ "FromApp": "oc-discovery", "Payload": b64(&prop) }).to_string();
    assert_eq!(b.on_nats("propalgation_event", ours.as_bytes(), &book(), NOW), Ok(Handled::Ignored));
    assert!(actions(&mut b).is_empty());
    // Another subject is not ours to handle.
    assert_eq!(b.on_nats("workflow_event", msg.as_bytes(), &book(), NOW), Ok(Handled::Ignored));
}

#[test]
fn malformed_messages_are_errors_and_do_nothing() {
    let mut b = bridge();
    let bad: Vec<(&[u8], fn(&BridgeError) -> bool)> = vec![
        (b"not json", |e| matches!(e, BridgeError::Json { .. })),
        (b"[1,2]", |e| matches!(e, BridgeError::NotAnObject(_))),
        (br#"{"Payload": 5}"#, |e| matches!(e, BridgeError::Field { field: "Payload", .. })),
        (br#"{"Payload": "%%%"}"#, |e| matches!(e, BridgeError::Field { field: "Payload", .. })),
        (br#"{"User": 3, "Payload": ""}"#, |e| matches!(e, BridgeError::Field { field: "User", .. })),
        (br#"{"Datatype": "NO_SUCH", "Payload": ""}"#, |e| matches!(e, BridgeError::UnknownName { .. })),
        (br#"{"Payload": ""}"#, |e| matches!(e, BridgeError::Json { .. })),
    ];
    for (msg, check) in bad {
        let e = b.on_nats("propalgation_event", msg, &book(), NOW).unwrap_err();
        assert!(check(&e), "{}: {e:?}", String::from_utf8_lossy(msg));
    }
    // A propagation without an action, with an unknown action, with a bad target.
    let no_action = json!({ "Payload": b64(&json!({"DataType": 1})) }).to_string();
    assert_eq!(
        b.on_nats("propalgation_event", no_action.as_bytes(), &book(), NOW),
        Err(BridgeError::Missing("Action"))
    );
    let unknown = propagation(json!(99), json!(1), json!(1), json!({}));
    assert!(matches!(b.on_nats("propalgation_event", &unknown, &book(), NOW), Err(BridgeError::Unsupported(_))));
    let bad_target = propagation(json!("PB_ADMIRALTY_CONFIG"), json!(1), json!(1), json!({"peer_id": "x".repeat(200)}));
    assert!(matches!(b.on_nats("propalgation_event", &bad_target, &book(), NOW), Err(BridgeError::BadPeer(_))));
    assert!(actions(&mut b).is_empty(), "nothing happens for a malformed message");
}

#[test]
fn a_booking_goes_to_its_peer_with_its_own_protocol() {
    // B24: the seed sent a booking's update or delete on the create protocol.
    for (action, protocol) in [("PB_CREATE", AppProtocol::Create), ("PB_DELETE", AppProtocol::Delete)] {
        let mut b = bridge();
        let to = peer(7).to_string();
        let msg = propagation(json!(action), json!("BOOKING"), json!("BOOKING"), json!({"peer_id": to}));
        b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
        let s = sends(&actions(&mut b));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, Target::Peer(peer(7)));
        assert_eq!(s[0].1, protocol);
        assert_eq!(s[0].2, Codes::default().datatypes.code("BOOKING"));
    }
}

#[test]
fn a_peer_relation_updates_the_book_and_a_new_partner_hears_of_us_without_a_relation() {
    let mut b = bridge();
    let p = peer(8).to_string();
    let msg =
        propagation(json!("PB_UPDATE"), json!("PEER"), json!("PEER"), json!({"peer_id": p, "relation": "PARTNER"}));
    b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    let a = actions(&mut b);
    assert!(
        a.contains(&BridgeAction::Command(Command::SetRelation { peer: peer(8), relation: Some(Relation::Partner) }))
    );
    let s = sends(&a);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].1, AppProtocol::Update);
    let told: Value = serde_json::from_slice(&s[0].4).unwrap();
    assert_eq!(told, json!({"peer_id": me().to_string()}), "B23: no relation is imposed on the receiver");
    // Blacklisting by number, through create_resource (F16), and deleting.
    let blacklist = Codes::default().relations.code("BLACKLIST").unwrap();
    let created = json!({"FromApp": "oc-peer", "Datatype": "PEER", "Payload": b64(&json!({"peer_id": p, "relation": blacklist}))});
    b.on_nats("create_resource", created.to_string().as_bytes(), &book(), NOW).unwrap();
    assert_eq!(
        actions(&mut b),
        vec![BridgeAction::Command(Command::SetRelation { peer: peer(8), relation: Some(Relation::Blocked) })]
    );
    let msg = propagation(json!("PB_DELETE"), json!("PEER"), json!("PEER"), json!({"peer_id": p}));
    b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    assert_eq!(actions(&mut b), vec![BridgeAction::Command(Command::SetRelation { peer: peer(8), relation: None })]);
    // Our own peer and other datatypes on create_resource are not peer-book business.
    let own = json!({"Datatype": "PEER", "Payload": b64(&json!({"peer_id": me().to_string(), "relation": 1}))});
    assert_eq!(b.on_nats("create_resource", own.to_string().as_bytes(), &book(), NOW), Ok(Handled::Ignored));
    let other = json!({"Datatype": 1, "Payload": b64(&json!({}))});
    assert_eq!(b.on_nats("create_resource", other.to_string().as_bytes(), &book(), NOW), Ok(Handled::Ignored));
}

#[test]
fn considers_and_config_events_go_to_the_named_peers() {
    let mut b = bridge();
    let ids = vec![peer(1).to_string(), "did:example:carol".to_string()];
    let msg = propagation(json!("PB_CONSIDERS"), json!("WORKFLOW_EXECUTION"), json!(0), json!({"peer_ids": ids}));
    b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    let s = sends(&actions(&mut b));
    assert_eq!(
        s.iter().map(|x| (x.0.clone(), x.1)).collect::<Vec<_>>(),
        vec![
            (Target::Peer(peer(1)), AppProtocol::Considers),
            (Target::Did(Did::new("did:example:carol").unwrap()), AppProtocol::Considers)
        ]
    );
    // Other datatypes: the origin.
    let msg =
        propagation(json!("PB_CONSIDERS"), json!("DATA_RESOURCE"), json!(0), json!({"origin_id": peer(2).to_string()}));
    b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    assert_eq!(sends(&actions(&mut b))[0].0, Target::Peer(peer(2)));
    for (action, protocol) in
        [("PB_ADMIRALTY_CONFIG", AppProtocol::AdmiraltyConfig), ("PB_MINIO_CONFIG", AppProtocol::MinioConfig)]
    {
        let msg = propagation(json!(action), json!(1), json!(0), json!({"peer_id": peer(5).to_string()}));
        b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
        let s = sends(&actions(&mut b));
        assert_eq!((s[0].0.clone(), s[0].1), (Target::Peer(peer(5)), protocol));
    }
    let none = propagation(json!("PB_CONSIDERS"), json!("BOOKING"), json!(0), json!({}));
    assert_eq!(b.on_nats("propalgation_event", &none, &book(), NOW), Err(BridgeError::Missing("peer_ids")));
}

#[test]
fn planner_sessions_open_on_request_and_close() {
    let mut b = bridge();
    // A request for peer 1's planner: an empty payload.
    let ask = propagation(json!("PB_PLANNER"), json!(0), json!(0), json!({"peer_id": peer(1).to_string()}));
    b.on_nats("propalgation_event", &ask, &book(), NOW).unwrap();
    let s = sends(&actions(&mut b));
    assert_eq!((s[0].0.clone(), s[0].1, s[0].4.is_empty()), (Target::Peer(peer(1)), AppProtocol::Planner, true));
    // Peer 2 asks for ours: the apps get planner_execution with its id, and a session opens.
    b.on_inbox(&entry(AppProtocol::Planner, peer(2), 1, "u", Value::Null), NOW);
    let p = publications(&actions(&mut b));
    assert_eq!(p[0].0, "planner_execution");
    assert_eq!(inner_payload(&p[0].1), json!({"peer_id": peer(2).to_string()}));
    assert_eq!(p[0].1["Datatype"], json!(Codes::default().datatypes.code("BOOKING").unwrap()));
    // A plan received: the map with the sender's id.
    b.on_inbox(&entry(AppProtocol::Planner, peer(1), 2, "u", json!({"plan": [1, 2]})), NOW);
    let p = publications(&actions(&mut b));
    assert_eq!(inner_payload(&p[0].1), json!({"plan": [1, 2], "peer_id": peer(1).to_string()}));
    // A broadcast update goes to the open sessions (peer 2), with the payload.
    let update = propagation(json!("PB_PLANNER"), json!(0), json!(0), json!({"plan": "v2", "x": 1}));
    b.on_nats("propalgation_event", &update, &book(), NOW).unwrap();
    let s = sends(&actions(&mut b));
    assert_eq!(s.iter().map(|x| x.0.clone()).collect::<Vec<_>>(), vec![Target::Peer(peer(2))]);
    assert!(!s[0].4.is_empty());
    let close = propagation(json!("PB_CLOSE_PLANNER"), json!(0), json!(0), json!({"peer_id": peer(2).to_string()}));
    b.on_nats("propalgation_event", &close, &book(), NOW).unwrap();
    b.on_nats("propalgation_event", &update, &book(), NOW).unwrap();
    assert!(sends(&actions(&mut b)).is_empty(), "closed sessions get no broadcast");
}

#[test]
fn inbox_entries_map_to_their_methods_with_the_message_id() {
    let mut b = bridge();
    let cases = [
        (AppProtocol::Create, "create_resource", "CREATE_RESOURCE"),
        (AppProtocol::Update, "create_resource", "CREATE_RESOURCE"),
        (AppProtocol::Delete, "remove_resource", "REMOVE_RESOURCE"),
        (AppProtocol::Considers, "considers_event", "CONSIDERS_EVENT"),
        (AppProtocol::AdmiraltyConfig, "admiralty_config_event", "ADMIRALTY_CONFIG_EVENT"),
        (AppProtocol::MinioConfig, "minio_config_event", "MINIO_CONFIG_EVENT"),
        (AppProtocol::Verify, "verify_resource", "VERIFY_RESOURCE"),
    ];
    for (i, (protocol, subject, method)) in cases.into_iter().enumerate() {
        let e = entry(protocol, peer(1), i as u64 + 1, "alice", json!({"id": i}));
        b.on_inbox(&e, NOW);
        let p = publications(&actions(&mut b));
        assert_eq!(p.len(), 1, "{protocol:?}");
        let (s, body, msg_id) = &p[0];
        assert_eq!(s, subject);
        assert_eq!(msg_id.as_deref(), Some(e.id.to_string().as_str()));
        assert_eq!(body["FromApp"], json!("oc-discovery"));
        assert_eq!(body["Method"], json!(Codes::default().methods.code(method).unwrap()));
        assert_eq!(body["Datatype"], json!(1));
        assert_eq!(body["User"], json!("alice"));
        assert_eq!(inner_payload(body), json!({"id": i}));
    }
}

#[test]
fn subjects_and_codes_follow_the_configuration() {
    let mut config = BridgeConfig::default();
    config.subjects.insert("create_resource".into(), "apps.create".into());
    config.codes.methods.insert("CREATE_RESOURCE".into(), 42);
    config.codes.actions.insert("PB_CREATE".into(), 100);
    let mut b = Bridge::new(config, me());
    b.on_inbox(&entry(AppProtocol::Create, peer(1), 1, "u", json!({})), NOW);
    let p = publications(&actions(&mut b));
    assert_eq!(p[0].0, "apps.create");
    assert_eq!(p[0].1["Method"], json!(42));
    assert_eq!(b.codes().actions.name(100), Some("PB_CREATE"));
    let msg = propagation(json!(100), json!(1), json!(1), json!({}));
    b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    assert_eq!(sends(&actions(&mut b)).len(), 2);
    assert!(b.subscriptions().contains(&"apps.create".to_string()));
}

fn record(owner: &Keypair, name: &str) -> PeerRecord {
    let body = RecordBody {
        peer_id: owner.peer_id(),
        did: Did::new(format!("did:ocd:{name}")).unwrap(),
        name: name.into(),
        addrs: vec!["127.0.0.1:4001".into()],
        api_url: None,
        nats_address: None,
        wallet: None,
        issued_at: NOW,
        expires_at: NOW + Duration::from_secs(300),
    };
    PeerRecord::sign(body, owner).unwrap()
}

#[test]
fn peer_search_hits_come_back_with_the_user_and_close_search_cancels() {
    let mut b = bridge();
    let msg = propagation(json!("PB_SEARCH"), json!("PEER"), json!("PEER"), json!({"search": "bob"}));
    b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    let a = actions(&mut b);
    let Some(BridgeAction::Command(Command::Search { id, user, query })) = a.first() else { panic!("{a:?}") };
    assert_eq!(user, "alice");
    assert_eq!(query.name.as_deref(), Some("bob"));
    assert_ne!(id & BRIDGE_ID_BIT, 0);
    let hit = record(&Keypair::derive(5, "bob"), "bob");
    assert!(b.on_event(&Event::SearchHit { id: *id, record: hit.clone(), from: peer(1) }, NOW));
    let p = publications(&actions(&mut b));
    assert_eq!(p[0].0, "search_event");
    assert_eq!(p[0].1["User"], json!("alice"), "B26: the user comes back");
    assert_eq!(inner_payload(&p[0].1)["peer_id"], json!(hit.body.peer_id.to_string()));
    // Hits of the control socket's searches are not the bridge's.
    assert!(!b.on_event(&Event::SearchHit { id: 3, record: hit, from: peer(1) }, NOW));
    assert!(actions(&mut b).is_empty());
    let close = propagation(json!("PB_CLOSE_SEARCH"), json!("PEER"), json!("PEER"), json!({}));
    b.on_nats("propalgation_event", &close, &book(), NOW).unwrap();
    assert_eq!(actions(&mut b), vec![BridgeAction::Command(Command::CancelSearch { user: "alice".into() })]);
    let empty = propagation(json!("PB_SEARCH"), json!("PEER"), json!("PEER"), json!({"search": ""}));
    assert!(matches!(b.on_nats("propalgation_event", &empty, &book(), NOW), Err(BridgeError::BadSearch(_))));
}

#[test]
fn resource_search_known_and_partner_round_trip() {
    let (me_k, them) = (me(), peer(1));
    let mut requester = bridge();
    let mut answerer = Bridge::new(BridgeConfig::default(), them);
    // `partner` reaches the partners, `known` every unblocked peer in the book.
    for (kind, expected) in [("partner", vec![peer(1), peer(2)]), ("known", vec![peer(1), peer(2), peer(3)])] {
        let msg =
            propagation(json!("PB_SEARCH"), json!(1), json!("DATA_RESOURCE"), json!({"type": kind, "search": "x"}));
        requester.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
        let s = sends(&actions(&mut requester));
        let mut to: Vec<PeerId> = s.iter().map(|x| if let Target::Peer(p) = x.0 { p } else { panic!() }).collect();
        to.sort();
        let mut expected = expected.clone();
        expected.sort();
        assert_eq!(to, expected, "{kind}");
        assert!(s.iter().all(|x| x.1 == AppProtocol::Search && x.3 == "alice"));
    }
    // The last request reaches the answering node: its apps are asked.
    let msg =
        propagation(json!("PB_SEARCH"), json!(1), json!("DATA_RESOURCE"), json!({"type": "partner", "search": "x"}));
    requester.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    let request = sends(&actions(&mut requester)).remove(0).4;
    let incoming = InboxEntry { payload: request, ..entry(AppProtocol::Search, me_k, 1, "alice", Value::Null) };
    answerer.on_inbox(&incoming, NOW);
    let a = actions(&mut answerer);
    let Some(BridgeAction::Request { token, publication }) = a.first() else { panic!("{a:?}") };
    assert_eq!(publication.subject, "resource_search");
    let asked: Value = serde_json::from_slice(&publication.payload).unwrap();
    assert_eq!(asked["Search"], json!("x"));
    assert_eq!(asked["User"], json!("alice"));
    assert_eq!(asked["Groups"], json!(["g1"]));
    assert_eq!(asked["Requester"], json!(me_k.to_string()));
    // Two replies from its apps: each goes back to the requester.
    answerer.on_reply(*token, br#"[{"name":"r1"},{"name":"r2"}]"#, NOW).unwrap();
    answerer.on_reply(*token, br#"{"name":"r3"}"#, NOW).unwrap();
    assert!(answerer.on_reply(*token, b"oops", NOW).is_err());
    let back = sends(&actions(&mut answerer));
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|x| x.0 == Target::Peer(me_k) && x.1 == AppProtocol::Search && x.3 == "alice"));
    // At the requester, each resource is a search_event with the user.
    for (i, (_, _, _, _, payload)) in back.into_iter().enumerate() {
        let e = InboxEntry { payload, ..entry(AppProtocol::Search, them, 10 + i as u64, "alice", Value::Null) };
        requester.on_inbox(&e, NOW);
    }
    let p = publications(&actions(&mut requester));
    let names: Vec<Value> = p.iter().map(|x| inner_payload(&x.1)["name"].clone()).collect();
    assert_eq!(names, vec![json!("r1"), json!("r2"), json!("r3")]);
    assert!(p.iter().all(|x| x.0 == "search_event" && x.1["User"] == json!("alice") && x.1["Datatype"] == json!(1)));
    // The answering side stops after the idle time.
    assert!(answerer.poll_timeout().is_some());
    answerer.handle_timeout(NOW + Duration::from_secs(6));
    assert_eq!(actions(&mut answerer), vec![BridgeAction::EndRequest { token: *token }]);
    assert_eq!(answerer.on_reply(*token, b"[{}]", NOW), Ok(()), "late replies are dropped");
    assert!(actions(&mut answerer).is_empty());
}

#[test]
fn results_of_a_closed_or_idle_search_are_dropped() {
    let mut b = bridge();
    let results = |seq| {
        let payload =
            serde_json::to_vec(&SearchPayload::Results { datatype: 1, resources: vec![json!({"n": 1})] }).unwrap();
        InboxEntry { payload, ..entry(AppProtocol::Search, peer(1), seq, "alice", Value::Null) }
    };
    b.on_inbox(&results(1), NOW);
    assert!(actions(&mut b).is_empty(), "no search of alice: B8");
    let msg = propagation(json!("PB_SEARCH"), json!(1), json!(1), json!({"type": "partner", "search": "x"}));
    b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    actions(&mut b);
    b.on_inbox(&results(2), NOW);
    assert_eq!(publications(&actions(&mut b)).len(), 1);
    let close = propagation(json!("PB_CLOSE_SEARCH"), json!(1), json!(1), json!({}));
    b.on_nats("propalgation_event", &close, &book(), NOW).unwrap();
    b.on_inbox(&results(3), NOW);
    assert!(actions(&mut b).is_empty(), "closed");
    b.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    actions(&mut b);
    b.handle_timeout(NOW + Duration::from_secs(5));
    b.on_inbox(&results(4), NOW + Duration::from_secs(5));
    assert!(actions(&mut b).is_empty(), "idle");
    let other = propagation(json!("PB_SEARCH"), json!(1), json!(1), json!({"type": "everyone", "search": "x"}));
    assert!(matches!(b.on_nats("propalgation_event", &other, &book(), NOW), Err(BridgeError::Unsupported(_))));
}

#[test]
fn a_search_of_type_all_goes_over_the_mesh_and_is_answered_by_every_apps() {
    let mut requester = bridge();
    let msg = propagation(json!("PB_SEARCH"), json!(1), json!("DATA_RESOURCE"), json!({"type": "all", "search": "x"}));
    requester.on_nats("propalgation_event", &msg, &book(), NOW).unwrap();
    let a = actions(&mut requester);
    assert_eq!(a.len(), 1, "one command for the mesh, no direct sends: {a:?}");
    let BridgeAction::Command(Command::ResourceSearch { id, user, request }) = &a[0] else { panic!("{a:?}") };
    assert_eq!(user, "alice");
    assert_ne!(id & BRIDGE_ID_BIT, 0);
    assert!(requester.on_event(&Event::ResourceSearchSent { id: *id, via: Some(peer(9)) }, NOW));
    // At another node, its indexer delivers it: its apps are asked, their reply goes back.
    let mut other = Bridge::new(BridgeConfig::default(), peer(5));
    let asked =
        Event::ResourceSearchAsked { requester: me(), user: user.clone(), request: request.clone(), via: peer(9) };
    assert!(!other.on_event(&asked, NOW));
    let a = actions(&mut other);
    let Some(BridgeAction::Request { token, publication }) = a.first() else { panic!("{a:?}") };
    let asked: Value = serde_json::from_slice(&publication.payload).unwrap();
    assert_eq!((asked["Search"].clone(), asked["User"].clone()), (json!("x"), json!("alice")));
    assert_eq!(asked["Requester"], json!(me().to_string()));
    other.on_reply(*token, br#"[{"name":"found"}]"#, NOW).unwrap();
    let back = sends(&actions(&mut other));
    assert_eq!((back[0].0.clone(), back[0].1), (Target::Peer(me()), AppProtocol::Search));
    let e = InboxEntry { payload: back[0].4.clone(), ..entry(AppProtocol::Search, peer(5), 1, "alice", Value::Null) };
    requester.on_inbox(&e, NOW);
    let p = publications(&actions(&mut requester));
    assert_eq!(inner_payload(&p[0].1), json!({"name": "found"}));
    assert_eq!(p[0].1["User"], json!("alice"));
}

#[test]
fn our_own_peer_is_announced_with_search_attr_peer_id() {
    let mut b = bridge();
    let k = Keypair::derive(1, "me");
    b.own_peer(&record(&k, "me"));
    let p = publications(&actions(&mut b));
    assert_eq!(p[0].0, "create_resource");
    assert_eq!(p[0].1["SearchAttr"], json!("peer_id"));
    assert_eq!(p[0].1["Datatype"], json!(Codes::default().datatypes.code("PEER").unwrap()));
    let peer = inner_payload(&p[0].1);
    assert_eq!(peer["peer_id"], json!(k.peer_id().to_string()));
    assert_eq!(peer["relation"], json!(Codes::default().relations.code("SELF").unwrap()));
}

#[test]
fn the_peer_book_follows_config_and_commands() {
    let mut b = book();
    assert_eq!(b.partners().collect::<Vec<_>>().len(), 2);
    assert!(b.is_blocked(&peer(4)) && b.is_known(&peer(3)) && !b.is_known(&peer(9)));
    assert!(b.set(peer(9), Some(Relation::Partner)));
    assert!(!b.set(peer(9), Some(Relation::Partner)), "no change");
    assert!(b.set(peer(9), None));
    // The configuration wins over what was stored.
    b.set(peer(4), Some(Relation::Partner));
    b.apply_config(&Config { blocked_peers: vec![peer(4)], ..Config::default() });
    assert!(b.is_blocked(&peer(4)));
}

mod arbitrary_input {
    use super::*;
    use proptest::prelude::*;

    /// JSON-shaped values of any depth, with the keys the bridge reads among others.
    fn value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("FromApp".to_string()),
            Just("Datatype".to_string()),
            Just("User".to_string()),
            Just("Groups".to_string()),
            Just("Payload".to_string()),
            Just("Action".to_string()),
            Just("DataType".to_string()),
            Just("peer_id".to_string()),
            Just("peer_ids".to_string()),
            Just("search".to_string()),
            Just("type".to_string()),
            Just("relation".to_string()),
            "[a-zA-Z_]{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,24}".prop_map(Value::from),
            prop_oneof![Just("PB_SEARCH"), Just("PB_CREATE"), Just("PEER"), Just("all"), Just("partner")]
                .prop_map(Value::from),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Value::from(data_encoding::BASE64.encode(&b))),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever arrives on a subscribed subject, as bytes or as JSON of any shape (also nested
        /// as the base64 payload of a propagation), the bridge never panics and stays bounded: at
        /// most one action per partner, known peer or listed target, plus a few.
        #[test]
        fn any_message_is_handled_or_refused_without_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..256),
            outer in value(),
            inner in value(),
            subject in prop_oneof![Just("propalgation_event"), Just("create_resource"), Just("other")],
        ) {
            let mut b = bridge();
            let _ = b.on_nats(subject, &raw, &book(), NOW);
            let _ = b.on_nats(subject, outer.to_string().as_bytes(), &book(), NOW);
            let nested = json!({ "Payload": b64(&json!({ "Action": outer, "DataType": 1, "Payload": b64(&inner) })) });
            let _ = b.on_nats(subject, nested.to_string().as_bytes(), &book(), NOW);
            let _ = b.on_reply(1 | BRIDGE_ID_BIT, &raw, NOW);
            let n = actions(&mut b).len();
            prop_assert!(n <= 3 * 64 + 16, "{n} actions");
        }
    }
}
