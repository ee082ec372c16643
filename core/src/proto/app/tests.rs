//! Unit tests of the application-message machine, one per rule of DESIGN §8: acknowledged once,
//! retried after a failure, moderate abandoned after its retries, a destination re-resolved before
//! each attempt, bounds refused, a restored queue resumes, a duplicate is not delivered twice, a
//! blocked or unknown sender refused.

use super::*;
use crate::proto::identity::Keypair;
use crate::proto::record::RecordBody;
use std::time::Duration;

const T0: Timestamp = Timestamp(50_000_000);

fn record(key: &Keypair, did: &Did, now: Timestamp) -> PeerRecord {
    let body = RecordBody {
        peer_id: key.peer_id(),
        did: did.clone(),
        name: "n".into(),
        addrs: vec!["127.0.0.1:9".into()],
        api_url: None,
        nats_address: None,
        wallet: None,
        issued_at: now,
        expires_at: now + Duration::from_secs(300),
    };
    PeerRecord::sign(body, key).expect("well-formed")
}

struct Node {
    key: Keypair,
    did: Did,
    app: AppService,
}

fn node(seed: u64, config: Config) -> Node {
    let key = Keypair::derive(seed, "app");
    let did = Did::from_random([seed as u8; 16]);
    let mut app = AppService::new(config, key.peer_id(), DetRng::new(seed, "app"), T0);
    app.set_record(record(&key, &did, T0));
    Node { key, did, app }
}

impl Node {
    fn id(&self) -> PeerId {
        self.key.peer_id()
    }
    fn record(&self) -> PeerRecord {
        record(&self.key, &self.did, T0)
    }
}

fn msg(to: Target, protocol: AppProtocol, payload: &[u8]) -> NewMessage {
    NewMessage { to, protocol, datatype: Some(7), user: "alice".into(), payload: payload.to_vec() }
}

fn events(out: &[Action]) -> Vec<Event> {
    out.iter().filter_map(|a| if let Action::Event(e) = a { Some(e.clone()) } else { None }).collect()
}

fn resolves(out: &[Action]) -> Vec<(u64, RecordKey)> {
    out.iter()
        .filter_map(|a| if let Action::Resolve { token, key } = a { Some((*token, key.clone())) } else { None })
        .collect()
}

fn delivers(out: &[Action]) -> Vec<(PeerId, Deliver)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to, message: Envelope::App(AppMessage::Deliver(d)) } => Some((*to, (**d).clone())),
            _ => None,
        })
        .collect()
}

fn sends(out: &[Action]) -> Vec<(PeerId, AppMessage)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to, message: Envelope::App(m) } => Some((*to, m.clone())),
            _ => None,
        })
        .collect()
}

/// Sends `m` from `a` and resolves its destination to `b`: the messages put on the wire.
fn send_and_resolve(a: &mut Node, b: &Node, m: NewMessage, now: Timestamp) -> Vec<Action> {
    let mut out = Vec::new();
    a.app.send(1, m, now, &mut out);
    let (token, _) = resolves(&out).pop().expect("the destination is resolved first");
    a.app.on_resolved(token, Some(b.record()), true, now, &mut out);
    out
}

#[test]
fn a_critical_message_is_persisted_then_delivered_once_and_forgotten_on_the_ack() {
    let (mut a, mut b) = (node(1, Config::default()), node(2, Config::default()));
    let out = send_and_resolve(&mut a, &b, msg(Target::Did(b.did.clone()), AppProtocol::Create, b"x"), T0);
    // Sequence reservation, then the queue entry, then the acceptance: durable before the answer.
    let persist_at = out.iter().position(|x| matches!(x, Action::Persist(Persist::Queued(_))));
    let accepted_at = out.iter().position(|x| matches!(x, Action::Event(Event::AppAccepted { .. })));
    assert!(persist_at.is_some() && persist_at < accepted_at, "{out:?}");
    let (to, d) = delivers(&out).pop().expect("sent once resolved");
    assert_eq!(to, b.id());
    assert!(out.contains(&Action::Learn(PeerAddr { id: b.id(), addrs: vec!["127.0.0.1:9".into()] })));

    // The receiver persists the entry, then acknowledges.
    let mut rx = Vec::new();
    b.app.on_message(a.id(), AppMessage::Deliver(Box::new(d.clone())), false, T0, &mut rx);
    let inbox = rx.iter().position(|x| matches!(x, Action::Persist(Persist::Inbox { .. })));
    let ack = rx.iter().position(|x| matches!(x, Action::Send { message: Envelope::App(AppMessage::Ack { .. }), .. }));
    assert!(inbox.is_some() && inbox < ack, "inbox before ack: {rx:?}");
    match &rx[inbox.unwrap_or(0)] {
        Action::Persist(Persist::Inbox { entry, .. }) => {
            assert_eq!(entry.id, d.id);
            assert_eq!(entry.from_did, Some(a.did.clone()), "the sender's DID from its record");
            assert_eq!(entry.payload, b"x");
        }
        other => panic!("{other:?}"),
    }

    // The ack ends it: forgotten, delivered, nothing pending.
    let mut out = Vec::new();
    a.app.on_message(b.id(), AppMessage::Ack { id: d.id }, false, T0, &mut out);
    assert!(out.contains(&Action::Forget(Forget::Queued(d.id))));
    assert!(matches!(events(&out).as_slice(), [Event::AppDelivered { attempts: 1, .. }]));
    assert_eq!(a.app.poll_timeout(), None);
    // A second ack changes nothing.
    let mut out = Vec::new();
    a.app.on_message(b.id(), AppMessage::Ack { id: d.id }, false, T0, &mut out);
    assert!(out.is_empty());
}

#[test]
fn a_duplicate_is_acknowledged_again_but_not_delivered_twice() {
    let (mut a, mut b) = (node(1, Config::default()), node(2, Config::default()));
    let out = send_and_resolve(&mut a, &b, msg(Target::Peer(b.id()), AppProtocol::Update, b"y"), T0);
    let (_, d) = delivers(&out).pop().expect("sent");
    for round in 0..3 {
        let mut rx = Vec::new();
        b.app.on_message(a.id(), AppMessage::Deliver(Box::new(d.clone())), false, T0, &mut rx);
        let persisted = rx.iter().filter(|x| matches!(x, Action::Persist(Persist::Inbox { .. }))).count();
        assert_eq!(persisted, usize::from(round == 0));
        assert!(sends(&rx).contains(&(a.id(), AppMessage::Ack { id: d.id })), "always acknowledged");
    }
    assert!(b.app.inbox.knows(&d.id));
}

#[test]
fn the_floor_lets_the_receiver_forget_settled_ids_and_still_refuse_them() {
    let (a, mut b) = (node(1, Config::default()), node(2, Config::default()));
    let id = |seq| MessageId { sender: a.id(), epoch: 9, seq };
    let deliver = |seq, floor| Deliver {
        id: id(seq),
        floor,
        protocol: AppProtocol::Create,
        datatype: None,
        user: String::new(),
        payload: Vec::new(),
        record: Some(a.record()),
    };
    let mut rx = Vec::new();
    for seq in 1..=3 {
        b.app.on_message(a.id(), AppMessage::Deliver(Box::new(deliver(seq, 1))), false, T0, &mut rx);
    }
    rx.clear();
    // Seq 10 says everything below 10 is settled: 1..3 are forgotten, yet still duplicates.
    b.app.on_message(a.id(), AppMessage::Deliver(Box::new(deliver(10, 10))), false, T0, &mut rx);
    assert!(rx.iter().any(|x| matches!(x, Action::Persist(Persist::Inbox { floor: 10, .. }))));
    rx.clear();
    b.app.on_message(a.id(), AppMessage::Deliver(Box::new(deliver(2, 1))), false, T0, &mut rx);
    assert_eq!(events(&rx), vec![Event::AppDuplicate { id: id(2) }]);
}

#[test]
fn a_failed_attempt_is_retried_after_the_interval_with_a_fresh_resolution() {
    let config = Config::default();
    let (mut a, b) = (node(1, config.clone()), node(2, config.clone()));
    let out = send_and_resolve(&mut a, &b, msg(Target::Did(b.did.clone()), AppProtocol::Delete, b"z"), T0);
    let (_, d) = delivers(&out).pop().expect("sent");
    // The connection drops before the ack.
    let mut out = Vec::new();
    a.app.on_unreachable(b.id(), T0, &mut out);
    assert!(events(&out).is_empty(), "critical: not abandoned");
    let retry_at = T0 + config.dnt_retry_interval;
    assert_eq!(a.app.poll_timeout(), Some(retry_at));
    // The destination is resolved again, now to nothing (b's record is gone): another failure.
    let mut out = Vec::new();
    a.app.handle_timeout(retry_at, &mut out);
    let (token, key) = resolves(&out).pop().expect("re-resolved before the retry");
    assert_eq!(key, RecordKey::Did(b.did.clone()));
    a.app.on_resolved(token, None, true, retry_at, &mut out);
    assert_eq!(a.app.poll_timeout(), Some(retry_at + config.dnt_retry_interval));
    // Then found again: the same message (same id) goes out, marked as a retry.
    let t2 = retry_at + config.dnt_retry_interval;
    let mut out = Vec::new();
    a.app.handle_timeout(t2, &mut out);
    let (token, _) = resolves(&out).pop().expect("resolved");
    a.app.on_resolved(token, Some(b.record()), true, t2, &mut out);
    let (_, again) = delivers(&out).pop().expect("sent again");
    assert_eq!(again.id, d.id);
    assert!(events(&out).contains(&Event::AppRetry { message: d.id, attempt: 3 }));
    // A missing ack is a failure too; attempts are `dnt_retry_interval` apart start to start, so
    // the time the failure took to show (the ack timeout) is not added to the interval.
    let mut out = Vec::new();
    let late = a.app.poll_timeout().expect("an ack deadline");
    assert_eq!(late, t2 + config.app_ack_timeout);
    a.app.handle_timeout(late, &mut out);
    assert_eq!(a.app.poll_timeout(), Some(t2 + config.dnt_retry_interval));
    // A failure that shows after the interval is retried at once.
    let t3 = t2 + config.dnt_retry_interval;
    let mut out = Vec::new();
    a.app.handle_timeout(t3, &mut out);
    let (token, _) = resolves(&out).pop().expect("resolving");
    let slow = t3 + config.dnt_retry_interval + std::time::Duration::from_secs(5);
    let mut out = Vec::new();
    a.app.on_resolved(token, None, true, slow, &mut out);
    assert_eq!(resolves(&out).len(), 1, "resolved again at once");
    assert!(a.app.poll_timeout().is_none_or(|t| t > slow), "no deadline left at now: {:?}", a.app.poll_timeout());
    // That attempt, failing at the same instant, waits its interval.
    let (token, _) = resolves(&out).pop().expect("resolving");
    let mut out = Vec::new();
    a.app.on_resolved(token, None, true, slow, &mut out);
    assert!(resolves(&out).is_empty());
    assert_eq!(a.app.poll_timeout(), Some(slow + config.dnt_retry_interval));
}

#[test]
fn a_moderate_message_is_abandoned_after_its_retries_and_search_after_one_try() {
    let config = Config::default();
    let (mut a, b) = (node(1, config.clone()), node(2, config.clone()));
    let mut out = Vec::new();
    a.app.send(1, msg(Target::Peer(b.id()), AppProtocol::Planner, b"p"), T0, &mut out);
    a.app.send(2, msg(Target::Peer(b.id()), AppProtocol::Search, b"s"), T0, &mut out);
    assert!(!out.iter().any(|x| matches!(x, Action::Persist(Persist::Queued(_)))), "only critical is persisted");
    let mut now = T0;
    let mut abandoned = Vec::new();
    for attempt in 1..=5 {
        let (token, _) = resolves(&out).pop().unwrap_or_else(|| panic!("attempt {attempt} resolves"));
        out.clear();
        a.app.on_resolved(token, None, true, now, &mut out);
        for e in events(&out) {
            if let Event::AppAbandoned { message, reason } = e {
                abandoned.push((attempt, message.seq, reason));
            }
        }
        let Some(next) = a.app.poll_timeout() else { break };
        now = next;
        out.clear();
        a.app.handle_timeout(now, &mut out);
    }
    // The search message gives up at its first failure, the planner message after 1 + 3 attempts.
    assert_eq!(abandoned, vec![(1, 2, Abandon::Retries), (4, 1, Abandon::Retries)]);
    assert_eq!(a.app.poll_timeout(), None);
    assert!(a.app.queue().destinations.is_empty());
}

#[test]
fn the_queue_is_bounded_in_total_and_per_destination() {
    let config = Config { dnt_queue_max: 3, dnt_queue_max_per_destination: 2, ..Config::default() };
    let (mut a, b, c) = (node(1, config.clone()), node(2, config.clone()), node(3, config.clone()));
    let mut out = Vec::new();
    for id in 1..=3 {
        a.app.send(id, msg(Target::Peer(b.id()), AppProtocol::Create, b"."), T0, &mut out);
    }
    a.app.send(4, msg(Target::Peer(c.id()), AppProtocol::Create, b"."), T0, &mut out);
    a.app.send(5, msg(Target::Peer(c.id()), AppProtocol::Create, b"."), T0, &mut out);
    let refused: Vec<(u64, SendRefusal)> = events(&out)
        .into_iter()
        .filter_map(|e| if let Event::AppSendRefused { id, reason } = e { Some((id, reason)) } else { None })
        .collect();
    assert_eq!(refused, vec![(3, SendRefusal::DestinationFull), (5, SendRefusal::QueueFull)]);
    let mut out = Vec::new();
    a.app.send(6, msg(Target::Peer(c.id()), AppProtocol::Create, &vec![0; config.app_max_payload + 1]), T0, &mut out);
    a.app.send(7, msg(Target::Peer(a.id()), AppProtocol::Create, b"."), T0, &mut out);
    let reasons: Vec<SendRefusal> = events(&out)
        .into_iter()
        .filter_map(|e| if let Event::AppSendRefused { reason, .. } = e { Some(reason) } else { None })
        .collect();
    assert_eq!(reasons, vec![SendRefusal::TooLarge, SendRefusal::BadDestination]);
}

#[test]
fn a_restored_queue_resumes_with_its_ids_and_a_restart_never_reuses_one() {
    let config = Config::default();
    let (mut a, b) = (node(1, config.clone()), node(2, config.clone()));
    let mut out = Vec::new();
    a.app.send(1, msg(Target::Peer(b.id()), AppProtocol::Create, b"1"), T0, &mut out);
    let reserved = out.iter().find_map(|x| match x {
        Action::Persist(Persist::Sequence { epoch, reserved }) => Some((*epoch, *reserved)),
        _ => None,
    });
    let queued: Vec<QueuedMessage> = out
        .iter()
        .filter_map(|x| if let Action::Persist(Persist::Queued(q)) = x { Some(q.clone()) } else { None })
        .collect();
    assert_eq!(queued.len(), 1);
    // "Crash": a new machine gets what was persisted.
    let mut a2 = node(1, config.clone());
    let mut out = Vec::new();
    let later = T0 + Duration::from_secs(60);
    a2.app.restore(Restored { sequence: reserved, queue: queued.clone(), ..Restored::default() }, later, &mut out);
    assert_eq!(a2.app.poll_timeout(), Some(later), "the restored message is due at once");
    a2.app.handle_timeout(later, &mut out);
    let (token, _) = resolves(&out).pop().expect("resolved");
    a2.app.on_resolved(token, Some(b.record()), true, later, &mut out);
    let (_, d) = delivers(&out).pop().expect("resent");
    assert_eq!(d.id, queued[0].id, "the same id: the receiver recognises a duplicate");
    // A new message after the restart takes an id past everything reserved before.
    let mut out = Vec::new();
    a2.app.send(2, msg(Target::Peer(b.id()), AppProtocol::Create, b"2"), later, &mut out);
    let new_id = out.iter().find_map(|x| match x {
        Action::Event(Event::AppAccepted { message, .. }) => Some(*message),
        _ => None,
    });
    let (epoch, reserved) = reserved.expect("a reservation");
    assert_eq!(new_id.map(|m| (m.epoch, m.seq >= reserved)), Some((epoch, true)));
}

#[test]
fn the_receiver_refuses_blocked_and_unknown_senders_and_oversized_messages() {
    let (a, stranger) = (node(1, Config::default()), node(3, Config::default()));
    let config = Config { blocked_peers: vec![a.id()], ..Config::default() };
    let mut b = node(2, config);
    let d = |from: &Node, record: bool, payload: usize| Deliver {
        id: MessageId { sender: from.id(), epoch: 1, seq: 1 },
        floor: 1,
        protocol: AppProtocol::Create,
        datatype: None,
        user: String::new(),
        payload: vec![0; payload],
        record: record.then(|| from.record()),
    };
    let refusal = |b: &mut Node, from: PeerId, m: Deliver, known: bool| {
        let mut rx = Vec::new();
        b.app.on_message(from, AppMessage::Deliver(Box::new(m)), known, T0, &mut rx);
        let stored = rx.iter().any(|x| matches!(x, Action::Persist(_)));
        let reason = sends(&rx)
            .into_iter()
            .find_map(|(_, m)| if let AppMessage::Refused { reason, .. } = m { Some(reason) } else { None });
        assert_eq!(stored, reason.is_none(), "stored exactly when accepted");
        reason
    };
    assert_eq!(refusal(&mut b, a.id(), d(&a, true, 1), true), Some(AppRefusal::Blocked));
    assert_eq!(refusal(&mut b, stranger.id(), d(&stranger, false, 1), false), Some(AppRefusal::Unknown));
    // Someone else's record proves nothing; an id claiming another sender neither.
    assert_eq!(
        refusal(&mut b, stranger.id(), Deliver { record: Some(a.record()), ..d(&stranger, false, 1) }, false),
        Some(AppRefusal::Unknown)
    );
    assert_eq!(refusal(&mut b, stranger.id(), d(&a, true, 1), true), Some(AppRefusal::Unknown));
    let big = Config::default().app_max_payload + 1;
    assert_eq!(refusal(&mut b, stranger.id(), d(&stranger, true, big), false), Some(AppRefusal::TooLarge));
    assert_eq!(refusal(&mut b, stranger.id(), d(&stranger, true, 1), false), None, "its own valid record: known");
}

#[test]
fn a_final_refusal_abandons_and_a_retryable_one_waits() {
    let config = Config::default();
    let (mut a, b) = (node(1, config.clone()), node(2, config.clone()));
    let out = send_and_resolve(&mut a, &b, msg(Target::Peer(b.id()), AppProtocol::Create, b"x"), T0);
    let (_, d) = delivers(&out).pop().expect("sent");
    let mut out = Vec::new();
    a.app.on_message(b.id(), AppMessage::Refused { id: d.id, reason: AppRefusal::Unknown }, false, T0, &mut out);
    assert!(events(&out).is_empty(), "retryable: kept");
    assert_eq!(a.app.poll_timeout(), Some(T0 + config.dnt_retry_interval));
    let t = T0 + config.dnt_retry_interval;
    let mut out = Vec::new();
    a.app.handle_timeout(t, &mut out);
    let (token, _) = resolves(&out).pop().expect("resolved");
    a.app.on_resolved(token, Some(b.record()), true, t, &mut out);
    let mut out = Vec::new();
    a.app.on_message(b.id(), AppMessage::Refused { id: d.id, reason: AppRefusal::Blocked }, false, t, &mut out);
    assert!(out.contains(&Action::Forget(Forget::Queued(d.id))));
    assert!(
        events(&out).contains(&Event::AppAbandoned { message: d.id, reason: Abandon::Refused(AppRefusal::Blocked) })
    );
}

#[test]
fn no_live_indexer_yet_is_not_a_failed_attempt() {
    let config = Config::default();
    let (mut a, b) = (node(1, config.clone()), node(2, config.clone()));
    let mut out = Vec::new();
    a.app.send(1, msg(Target::Peer(b.id()), AppProtocol::Verify, b"v"), T0, &mut out);
    for i in 0..10 {
        let (token, _) = resolves(&out).pop().expect("resolving");
        out.clear();
        let now = T0 + Duration::from_secs(i);
        a.app.on_resolved(token, None, false, now, &mut out);
        assert!(events(&out).is_empty(), "no failure counted");
        let next = a.app.poll_timeout().expect("soon again");
        assert!(next.since(now) < config.dnt_retry_interval);
        a.app.handle_timeout(next, &mut out);
    }
    let (token, _) = resolves(&out).pop().expect("resolving");
    a.app.on_resolved(token, Some(b.record()), true, T0 + Duration::from_secs(10), &mut out);
    assert_eq!(delivers(&out).len(), 1, "first real attempt, not a retry");
    assert!(!events(&out).iter().any(|e| matches!(e, Event::AppRetry { .. })));
}

#[test]
fn a_search_answer_whose_link_dropped_under_it_is_sent_once_more_at_once() {
    let config = Config::default();
    let (mut a, b) = (node(1, config.clone()), node(2, config.clone()));
    let mut out = Vec::new();
    a.app.send(1, msg(Target::Peer(b.id()), AppProtocol::Search, b"s"), T0, &mut out);
    let mut sent = 0;
    let mut abandoned = Vec::new();
    for attempt in 1..=3 {
        let Some((token, _)) = resolves(&out).pop() else { break };
        out.clear();
        a.app.on_resolved(token, Some(b.record()), true, T0, &mut out);
        sent += delivers(&out).len();
        assert_eq!(delivers(&out).len(), 1, "attempt {attempt} sends it");
        // b closed the connection as idle just as it went out.
        out.clear();
        a.app.on_unreachable(b.id(), T0, &mut out);
        for e in events(&out) {
            if let Event::AppAbandoned { message, reason } = e {
                abandoned.push((attempt, message.seq, reason));
            }
        }
    }
    // Sent twice, the second time at once; given up when the second link was lost too.
    assert_eq!(sent, 2);
    assert_eq!(abandoned, vec![(2, 1, Abandon::Retries)]);
    assert_eq!(a.app.poll_timeout(), None);
}
