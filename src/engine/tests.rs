//! One test per rule of PROTOCOL.md §3 and §4, named after the rule.

use super::*;
use crate::protocol::{FlagReason, OrderId};

/// 2025-11-11 10:00:00 in Shanghai.
const T0: i64 = 1_762_826_400_000;
const S: i64 = 1000;
const MIN: i64 = 60 * S;

struct Desk {
    engine: Engine,
    seq: u64,
}

fn settings(clock: Clock) -> Settings {
    Settings {
        clock,
        ..Settings::default()
    }
}

impl Desk {
    fn new() -> Self {
        Self::with(settings(Clock::Event))
    }

    fn with(settings: Settings) -> Self {
        Self {
            engine: Engine::new(Arc::new(settings)),
            seq: 0,
        }
    }

    /// Snapshots the engine and carries on with the engine restored from
    /// it, checking that the restored indexes agree with their slabs.
    fn restart(&mut self) {
        let bytes = self.engine.snapshot();
        self.engine = Engine::restore(self.engine.settings().clone(), &bytes).expect("the snapshot loads");
        self.engine.assert_consistent();
    }

    fn send(&mut self, ts: i64, shop: &str, kind: EventKind) -> Applied {
        self.seq += 1;
        let event = Event {
            id: format!("e{}", self.seq).as_str().into(),
            ts,
            shop: shop.into(),
            kind,
        };
        self.engine.apply(&event)
    }

    fn customer(&mut self, ts: i64, conv: &str, customer: &str, agent: Option<&str>) {
        self.customer_in("s1", ts, conv, customer, agent);
    }

    fn customer_in(&mut self, shop: &str, ts: i64, conv: &str, customer: &str, agent: Option<&str>) {
        self.send(
            ts,
            shop,
            EventKind::CustomerMessage {
                conversation: conv.into(),
                customer: customer.into(),
                agent: agent.map(Into::into),
            },
        );
    }

    fn reply(&mut self, ts: i64, conv: &str, customer: &str, agent: &str) {
        self.reply_in("s1", ts, conv, customer, agent, false);
    }

    fn auto_reply(&mut self, ts: i64, conv: &str, customer: &str, agent: &str) {
        self.reply_in("s1", ts, conv, customer, agent, true);
    }

    fn reply_in(&mut self, shop: &str, ts: i64, conv: &str, customer: &str, agent: &str, auto: bool) {
        self.send(
            ts,
            shop,
            EventKind::AgentMessage {
                conversation: conv.into(),
                customer: customer.into(),
                agent: agent.into(),
                auto,
            },
        );
    }

    fn assign(&mut self, ts: i64, conv: &str, customer: &str, agent: &str, from: Option<&str>) {
        self.send(
            ts,
            "s1",
            EventKind::Assign {
                conversation: conv.into(),
                customer: customer.into(),
                agent: agent.into(),
                from_agent: from.map(Into::into),
            },
        );
    }

    fn close(&mut self, ts: i64, conv: &str) {
        self.send(
            ts,
            "s1",
            EventKind::Close {
                conversation: conv.into(),
            },
        );
    }

    fn flag(&mut self, ts: i64, customer: &str) {
        self.send(
            ts,
            "s1",
            EventKind::Flag {
                customer: customer.into(),
                reason: FlagReason::Spam,
            },
        );
    }

    fn order(&mut self, ts: i64, customer: &str, amount: u64) {
        self.send(
            ts,
            "s1",
            EventKind::OrderPaid {
                order: OrderId::new(&format!("o{}", self.seq)),
                customer: customer.into(),
                amount,
            },
        );
    }

    fn status(&mut self, ts: i64, shop: &str, agent: &str, status: AgentStatus) {
        self.send(
            ts,
            shop,
            EventKind::Status {
                agent: agent.into(),
                status,
            },
        );
    }

    fn stats(&self, agent: &str, window: Window) -> AgentStats {
        self.engine
            .agent_stats(&agent.into(), window, None)
            .unwrap_or_else(|| panic!("agent {agent} unknown"))
    }

    fn today(&self, agent: &str) -> WindowMetrics {
        self.stats(agent, Window::Today).metrics
    }

    fn alerts(&mut self) -> Vec<(Transition, Rule, Severity, String)> {
        self.engine
            .take_alert_changes()
            .into_iter()
            .map(|c| (c.event, c.alert.rule, c.alert.severity, c.alert.agent.to_string()))
            .collect()
    }
}

use alerts::Transition;

/// `Desk::alerts` when it returns a single change.
fn only(event: Transition, rule: Rule, severity: Severity, agent: &str) -> Vec<(Transition, Rule, Severity, String)> {
    vec![(event, rule, severity, agent.to_owned())]
}

#[test]
fn wait_opens_at_first_counted_customer_message_and_later_ones_do_not_move_it() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.customer(T0 + 10 * S, "c1", "u1", None);
    d.reply(T0 + 30 * S, "c1", "u1", "a1");
    let m = d.today("a1");
    assert_eq!(m.responses, 1);
    assert_eq!(m.avg_response_ms, Some(30_000.0));
}

#[test]
fn response_sample_is_reply_ts_minus_wait_start() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", None); // queued
    d.assign(T0 + 5 * S, "c1", "u1", "a1", None);
    d.reply(T0 + 12 * S, "c1", "u1", "a1");
    assert_eq!(d.today("a1").max_ms, Some(12_000));
}

#[test]
fn negative_response_clamps_to_zero() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.reply(T0 - 5 * S, "c1", "u1", "a1");
    let m = d.today("a1");
    assert_eq!(m.responses, 1);
    assert_eq!(m.max_ms, Some(0));
}

#[test]
fn sample_is_credited_to_the_agent_who_replied() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    // a2 answers: the message reassigns the conversation to a2 first.
    d.reply(T0 + 20 * S, "c1", "u1", "a2");
    assert_eq!(d.today("a1").responses, 0);
    assert_eq!(d.today("a2").responses, 1);
    assert_eq!(d.stats("a1", Window::Today).live.open_conversations, 0);
    assert_eq!(d.stats("a2", Window::Today).live.open_conversations, 1);
}

#[test]
fn close_drops_the_open_wait_unanswered() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.close(T0 + 10 * S, "c1");
    d.reply(T0 + 20 * S, "c1", "u1", "a1");
    let s = d.stats("a1", Window::Today);
    assert_eq!(s.metrics.responses, 0);
    assert_eq!(s.live.waiting, 0);
}

#[test]
fn flagging_the_customer_drops_the_open_wait() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.flag(T0 + 10 * S, "u1");
    d.reply(T0 + 20 * S, "c1", "u1", "a1");
    assert_eq!(d.today("a1").responses, 0);
    assert_eq!(d.stats("a1", Window::Today).live.waiting, 0);
}

#[test]
fn agent_message_without_open_wait_makes_no_sample() {
    let mut d = Desk::new();
    d.reply(T0, "c1", "u1", "a1");
    d.customer(T0 + S, "c1", "u1", None);
    d.reply(T0 + 3 * S, "c1", "u1", "a1");
    d.reply(T0 + 9 * S, "c1", "u1", "a1");
    let m = d.today("a1");
    assert_eq!(m.responses, 1);
    assert_eq!(m.max_ms, Some(2000));
}

#[test]
fn auto_replies_never_close_a_wait() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.auto_reply(T0 + S, "c1", "u1", "a1");
    d.reply(T0 + 40 * S, "c1", "u1", "a1");
    let m = d.today("a1");
    assert_eq!(m.responses, 1);
    assert_eq!(m.max_ms, Some(40_000));
    assert_eq!(m.auto_replies, 1);
}

#[test]
fn first_response_is_the_first_sample_of_each_conversation() {
    let mut d = Desk::new();
    for (conv, first_delay) in [("c1", 10), ("c2", 30)] {
        d.customer(T0, conv, conv, Some("a1"));
        d.reply(T0 + first_delay * S, conv, conv, "a1");
        d.customer(T0 + 100 * S, conv, conv, None);
        d.reply(T0 + 200 * S, conv, conv, "a1");
    }
    let m = d.today("a1");
    assert_eq!(m.responses, 4);
    assert_eq!(m.first_responses, 2);
    assert_eq!(m.avg_first_response_ms, Some(20_000.0));
}

#[test]
fn avg_response_ms_is_the_exact_mean() {
    let mut d = Desk::new();
    for (i, delay) in [1001, 2002, 3004].iter().enumerate() {
        let conv = format!("c{i}");
        d.customer(T0, &conv, "u", Some("a1"));
        d.reply(T0 + delay, &conv, "u", "a1");
    }
    let m = d.today("a1");
    assert_eq!(m.avg_response_ms, Some((1001.0 + 2002.0 + 3004.0) / 3.0));
    assert!(d.today("a1").avg_response_ms.unwrap().fract() != 0.0);
}

#[test]
fn percentiles_are_nearest_rank_within_tolerance() {
    let mut d = Desk::new();
    for i in 1..=100 {
        let conv = format!("c{i}");
        d.customer(T0, &conv, &conv, Some("a1"));
        d.reply(T0 + i * S, &conv, &conv, "a1");
    }
    let m = d.today("a1");
    assert_eq!(
        (m.p50_ms, m.p90_ms, m.p99_ms, m.max_ms),
        (Some(50_000), Some(90_000), Some(99_000), Some(100_000))
    );
}

#[test]
fn slow_responses_are_samples_above_norm() {
    let mut d = Desk::new();
    for (i, delay) in [60 * S, 60 * S + 1, 120 * S].iter().enumerate() {
        let conv = format!("c{i}");
        d.customer(T0, &conv, &conv, Some("a1"));
        d.reply(T0 + delay, &conv, &conv, "a1");
    }
    assert_eq!(d.today("a1").slow_responses, 2);
}

#[test]
fn customers_count_messages_while_assigned() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.customer(T0 + S, "c1", "u1", None);
    d.customer(T0, "c2", "u2", Some("a1"));
    assert_eq!(d.today("a1").customers, 2);
}

#[test]
fn customers_count_an_open_wait_assigned_to_the_agent() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.assign(T0 + 10 * S, "c1", "u1", "a2", Some("a1")); // transfer with the wait open
    let (a1, a2) = (d.today("a1"), d.today("a2"));
    assert_eq!((a1.customers, a2.customers), (1, 1));
    assert_eq!((a1.transfers_out, a2.transfers_in), (1, 1));
    // A closed wait does not make a customer on assignment.
    d.reply(T0 + 20 * S, "c1", "u1", "a2");
    d.assign(T0 + 30 * S, "c1", "u1", "a3", Some("a2"));
    assert_eq!(d.today("a3").customers, 0);
}

#[test]
fn queued_customer_counts_for_nobody_until_assigned() {
    let mut d = Desk::new();
    d.status(T0, "s1", "a1", AgentStatus::Online);
    d.customer(T0, "c1", "u1", None);
    assert_eq!(d.today("a1").customers, 0);
    let shop = d
        .engine
        .shop_acc(&"s1".into(), Window::Today)
        .unwrap()
        .1
        .queue(T0 + 5 * S);
    assert_eq!((shop.queued, shop.oldest_queued_ms), (1, 5000));
}

#[test]
fn replied_customers_need_a_non_auto_message_in_the_window() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.auto_reply(T0 + S, "c1", "u1", "a1");
    d.customer(T0, "c2", "u2", Some("a1"));
    d.reply(T0 + S, "c2", "u2", "a1");
    let m = d.today("a1");
    assert_eq!((m.customers, m.replied_customers), (2, 1));
    assert_eq!(m.reply_rate, Some(0.5));
}

#[test]
fn reply_rate_is_null_without_customers() {
    let mut d = Desk::new();
    d.status(T0, "s1", "a1", AgentStatus::Online);
    let m = d.today("a1");
    assert_eq!(m.customers, 0);
    assert_eq!(m.reply_rate, None);
    assert_eq!(m.conversion_rate, None);
    assert_eq!(m.avg_response_ms, None);
}

#[test]
fn flagged_customer_leaves_customers_for_the_day_and_is_ignored_after() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.reply(T0 + S, "c1", "u1", "a1");
    d.customer(T0, "c2", "u2", Some("a1"));
    d.reply(T0 + S, "c2", "u2", "a1");
    d.flag(T0 + 2 * S, "u1");
    d.customer(T0 + 3 * S, "c1", "u1", Some("a1"));
    let s = d.stats("a1", Window::Today);
    assert_eq!((s.metrics.customers, s.metrics.replied_customers), (1, 1));
    assert_eq!(s.live.waiting, 0, "the flagged customer's message opened no wait");
    // The flag is per shop: the same id elsewhere is counted.
    d.customer_in("s2", T0 + 4 * S, "c1", "u1", Some("a1"));
    assert_eq!(d.today("a1").customers, 2);
}

#[test]
fn an_ignored_message_does_not_make_its_agent_known() {
    let mut d = Desk::new();
    d.flag(T0, "u1");
    d.customer(T0 + S, "c1", "u1", Some("a9"));
    assert!(
        !d.engine.knows(&AgentId::new("a9")),
        "the flagged customer's message is ignored whole"
    );
    assert!(d.engine.agent_ids().is_empty());
}

#[test]
fn order_is_credited_to_the_last_non_auto_sender_within_24h() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.reply(T0 + S, "c1", "u1", "a1");
    d.reply(T0 + 2 * S, "c1", "u1", "a2"); // transfer by message
    d.auto_reply(T0 + 3 * S, "c1", "u1", "a3");
    d.order(T0 + 10 * S, "u1", 5000);
    assert_eq!((d.today("a2").orders, d.today("a2").sales_fen), (1, 5000));
    assert_eq!(d.today("a1").orders, 0);
    assert_eq!(d.today("a3").orders, 0);
}

#[test]
fn order_arriving_late_is_credited_to_the_message_before_it() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.reply(T0 + S, "c1", "u1", "a1");
    d.reply(T0 + 100 * S, "c1", "u1", "a2");
    d.order(T0 + 50 * S, "u1", 700); // paid before a2 wrote
    assert_eq!(d.today("a1").orders, 1);
    assert_eq!(d.today("a2").orders, 0);
}

#[test]
fn order_arriving_late_is_credited_however_long_the_agent_chatted_on() {
    // The shop reports the payment after the agent has written 20 more
    // messages: the one before it must still be found.
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.reply(T0 + S, "c1", "u1", "a2");
    d.reply(T0 + 2 * S, "c1", "u1", "a1");
    for k in 0..20 {
        d.reply(T0 + (10 + k) * S, "c1", "u1", "a1");
    }
    d.order(T0 + 5 * S, "u1", 4200);
    assert_eq!((d.today("a1").orders, d.today("a1").sales_fen), (1, 4200));
    assert_eq!(d.today("a1").paying_customers, 1);
    // Paid between a2's message and a1's: a2's, which a1's streak did not
    // push out.
    d.order(T0 + S + 500, "u1", 300);
    assert_eq!(d.today("a2").orders, 1);
}

#[test]
fn order_arriving_late_is_credited_however_many_agents_wrote_after_it() {
    // Twelve changes of agent after the payment: more than the messages
    // held inline, so the one before the payment is found among the older.
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.reply(T0 + S, "c1", "u1", "a1");
    for k in 0..12 {
        let agent = ["a2", "a3"][k as usize % 2];
        d.reply(T0 + (10 + k) * S, "c1", "u1", agent);
    }
    d.order(T0 + 5 * S, "u1", 800);
    assert_eq!((d.today("a1").orders, d.today("a1").sales_fen), (1, 800));
    assert_eq!(d.today("a2").orders + d.today("a3").orders, 0);
}

#[test]
fn order_stamped_inside_a_streak_goes_to_the_streak_after_another_agents_late_message() {
    // a1 writes at 100, 200 and 300 s; a message a2 wrote at 150 s arrives
    // after them (another conversation of the same customer), then an
    // order paid at 250 s: a1's message at 200 s is the last before it.
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    for k in [100, 200, 300] {
        d.reply(T0 + k * S, "c1", "u1", "a1");
    }
    d.customer(T0 + 120 * S, "c2", "u1", Some("a2"));
    d.reply(T0 + 150 * S, "c2", "u1", "a2");
    d.order(T0 + 250 * S, "u1", 600);
    assert_eq!(d.today("a1").orders, 1);
    assert_eq!(d.today("a2").orders, 0);
    // Paid at 170 s: a2's message is the last before it.
    d.order(T0 + 170 * S, "u1", 50);
    assert_eq!(d.today("a2").orders, 1);
}

proptest::proptest! {
    /// A push reads the older messages to drop those past the horizon
    /// only when their kept lower bound says one may be; it keeps exactly
    /// what reading them on every push keeps, late messages (stamped
    /// before others held) among the pushes.
    #[test]
    fn older_messages_skip_their_read_only_when_none_is_too_old(
        pushes in proptest::collection::vec((0u32..3, -60 * 3_600_000i64..0, 0i64..4 * 3_600_000), 0..400)
    ) {
        let (mut m, mut always) = (RecentMessages::default(), RecentMessages::default());
        let mut now = T0;
        for (agent, dt, step) in pushes {
            now += step;
            m.push(agent, now + dt);
            always.push(agent, now + dt);
            if let Some(older) = always.older.as_mut() {
                older.oldest = i64::MIN;
            }
            proptest::prop_assert_eq!(m.iter().collect::<Vec<_>>(), always.iter().collect::<Vec<_>>());
        }
    }
}

#[test]
fn agent_messages_beyond_the_inline_ones_are_bounded_by_age_and_count() {
    use super::{OLDER_AGENT_MESSAGES, OLDER_MESSAGES_MS, RECENT_AGENT_MESSAGES, RecentMessages};
    let mut m = RecentMessages::default();
    // One agent writing 400 times a second apart: the first stays (it
    // answers every order up to the second), the middles of the run go.
    for k in 0..400 {
        m.push(1, k * 1000);
    }
    let held: Vec<i64> = m.iter().map(|(_, t)| t).collect();
    assert_eq!(held.len(), RECENT_AGENT_MESSAGES + OLDER_AGENT_MESSAGES);
    assert_eq!((held[0], held[held.len() - 1]), (0, 399_000));
    // Two agents in turn: no run of three, so the oldest go.
    let mut m = RecentMessages::default();
    for k in 0..400 {
        m.push(k as u32 % 2, k * 1000);
    }
    let held: Vec<i64> = m.iter().map(|(_, t)| t).collect();
    assert_eq!(held.len(), RECENT_AGENT_MESSAGES + OLDER_AGENT_MESSAGES);
    assert_eq!(held[0], (400 - held.len() as i64) * 1000);
    // Pushed out more than 48 h after it was written: dropped, and with
    // nothing older left, nothing stays allocated.
    let mut m = RecentMessages::default();
    m.push(1, 0);
    for k in 0..RECENT_AGENT_MESSAGES as i64 {
        m.push(2, OLDER_MESSAGES_MS + 1 + k);
    }
    assert!(m.older.is_none());
    assert_eq!(m.iter().count(), RECENT_AGENT_MESSAGES);
}

#[test]
fn the_message_ring_holds_offsets_and_snapshots_absolute_times() {
    use super::{Customer, RECENT_AGENT_MESSAGES, RecentMessages, RecentMessagesLayout};
    // 32-bit offsets instead of 64-bit times: 24 bytes less per customer.
    assert_eq!(std::mem::size_of::<Customer>(), 120);
    // Out of order, a late one among them, and more than the ring holds.
    let times = [5_000, 3_000, 9_000, 1_000, 9_000, 20_000, 7_000, 30_000, 25_000, 40_000];
    let mut m = RecentMessages::default();
    for (k, t) in times.iter().enumerate() {
        m.push(k as u32 % 3, T0 + t);
    }
    let held: Vec<(u32, i64)> = m.iter().collect();
    let pushed: Vec<(u32, i64)> = times.iter().enumerate().map(|(k, t)| (k as u32 % 3, T0 + t)).collect();
    assert_eq!(held, pushed);
    // The snapshot holds the times themselves, in the ring's slots, 0 in
    // one never written: the bytes of a ring of `i64` times.
    let mut short = RecentMessages::default();
    short.push(4, T0 + 60_000);
    short.push(5, T0 + 1_000);
    let mut ts = [0; RECENT_AGENT_MESSAGES];
    ts[..2].copy_from_slice(&[T0 + 60_000, T0 + 1_000]);
    let layout = RecentMessagesLayout {
        agents: [4, 5, 0, 0, 0, 0, 0, 0],
        ts,
        len: 2,
        next: 2,
        older: None,
    };
    let bytes = postcard::to_stdvec(&short).unwrap();
    assert_eq!(bytes, postcard::to_stdvec(&layout).unwrap());
    let back: RecentMessages = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.iter().collect::<Vec<_>>(), short.iter().collect::<Vec<_>>());
    let bytes = postcard::to_stdvec(&m).unwrap();
    let back: RecentMessages = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.iter().collect::<Vec<_>>(), held);
    assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes);
}

#[test]
fn a_ring_message_49_days_older_than_the_newest_is_forgotten() {
    use super::{RING_SPAN_MS, RecentMessages};
    let mut m = RecentMessages::default();
    m.push(1, T0);
    m.push(2, T0 + RING_SPAN_MS);
    assert_eq!(m.iter().collect::<Vec<_>>(), [(1, T0), (2, T0 + RING_SPAN_MS)]);
    m.push(3, T0 + RING_SPAN_MS + 1);
    assert_eq!(
        m.iter().collect::<Vec<_>>(),
        [(2, T0 + RING_SPAN_MS), (3, T0 + RING_SPAN_MS + 1)]
    );
    // A late message that old is forgotten at once; and through a snapshot.
    m.push(4, T0 - 1);
    assert_eq!(m.iter().count(), 2);
    let back: RecentMessages = postcard::from_bytes(&postcard::to_stdvec(&m).unwrap()).unwrap();
    assert_eq!(back.iter().collect::<Vec<_>>(), m.iter().collect::<Vec<_>>());
}

#[test]
fn a_streak_longer_than_a_day_still_credits_within_24h() {
    // One agent writes every 6 hours from 10:00 one day to 16:00 the next,
    // then at 17:30; an order paid at 17:00 is reported after that, 31 h
    // after the streak began and 1 h after a message in it.
    let mut d = Desk::new();
    let h = 3_600_000;
    d.customer(T0, "c1", "u1", Some("a1"));
    for k in 0..6 {
        d.reply(T0 + k * 6 * h, "c1", "u1", "a1");
    }
    d.reply(T0 + 31 * h + h / 2, "c1", "u1", "a1");
    d.order(T0 + 31 * h, "u1", 900);
    assert_eq!((d.today("a1").orders, d.today("a1").sales_fen), (1, 900));
}

#[test]
fn an_order_sent_again_under_another_event_id_counts_once() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.reply(T0 + S, "c1", "u1", "a1");
    let paid = |d: &mut Desk, id: &str, ts: i64, order: &str| {
        let event = Event {
            id: id.into(),
            ts,
            shop: "s1".into(),
            kind: EventKind::OrderPaid {
                order: OrderId::new(order),
                customer: "u1".into(),
                amount: 5000,
            },
        };
        d.engine.apply(&event)
    };
    assert_eq!(paid(&mut d, "pay-1", T0 + 10 * S, "o-77"), Applied::Accepted);
    // The payment system resends it with a new event id: taken, not counted.
    assert_eq!(paid(&mut d, "pay-1-retry", T0 + 11 * S, "o-77"), Applied::Accepted);
    assert_eq!((d.today("a1").orders, d.today("a1").sales_fen), (1, 5000));
    // Another order counts.
    assert_eq!(paid(&mut d, "pay-2", T0 + 12 * S, "o-78"), Applied::Accepted);
    assert_eq!((d.today("a1").orders, d.today("a1").sales_fen), (2, 10_000));
}

#[test]
fn sales_sums_stop_at_the_largest_total_instead_of_wrapping() {
    // Amounts are accepted up to i64::MAX fen; three such orders would
    // wrap a u64 sum back to a small number (or panic a debug build).
    let big = i64::MAX as u64;
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.reply(T0 + S, "c1", "u1", "a1");
    for k in 0..3 {
        d.order(T0 + (2 + k) * S, "u1", big);
        d.order(T0 + (2 + k) * S, "u-silent", big);
    }
    assert_eq!((d.today("a1").orders, d.today("a1").sales_fen), (3, u64::MAX));
    assert_eq!(d.stats("a1", Window::Min5).metrics.sales_fen, u64::MAX);
    let (acc, _) = d.engine.shop_acc(&"s1".into(), Window::Today).unwrap();
    assert_eq!((acc.tally.sales_fen, acc.tally.silent_sales_fen), (u64::MAX, u64::MAX));
    let (acc, _) = d.engine.shop_acc(&"s1".into(), Window::Min5).unwrap();
    assert_eq!((acc.tally.sales_fen, acc.tally.silent_sales_fen), (u64::MAX, u64::MAX));
}

#[test]
fn order_without_agent_message_in_24h_is_a_silent_order() {
    let mut d = Desk::new();
    d.customer(T0 - 25 * 60 * MIN, "c1", "u1", Some("a1"));
    d.reply(T0 - 25 * 60 * MIN + S, "c1", "u1", "a1");
    d.order(T0, "u1", 3000);
    d.order(T0, "u-never-chatted", 1000);
    let (acc, _) = d.engine.shop_acc(&"s1".into(), Window::Today).unwrap();
    assert_eq!((acc.tally.silent_orders, acc.tally.silent_sales_fen), (2, 4000));
    assert_eq!(acc.tally.orders, 0);
}

#[test]
fn paying_customers_conversion_rate_and_avg_order() {
    let mut d = Desk::new();
    for c in ["u1", "u2", "u3", "u4"] {
        d.customer(T0, c, c, Some("a1"));
        d.reply(T0 + S, c, c, "a1");
    }
    d.order(T0 + 10 * S, "u1", 1000);
    d.order(T0 + 11 * S, "u1", 3000);
    d.order(T0 + 12 * S, "u2", 2000);
    let m = d.today("a1");
    assert_eq!((m.orders, m.sales_fen, m.paying_customers), (3, 6000, 2));
    assert_eq!(m.conversion_rate, Some(0.5));
    assert_eq!(m.avg_order_fen, Some(3000.0)); // 6000 fen / 2 buyers
}

#[test]
fn today_is_the_shanghai_business_day_by_sample_ts() {
    let mut d = Desk::new();
    let midnight = 1_762_876_800_000; // 2025-11-11T16:00:00Z = 11-12 00:00 Shanghai
    d.customer(midnight - 20 * S, "c1", "u1", Some("a1"));
    d.reply(midnight - S, "c1", "u1", "a1"); // yesterday
    d.customer(midnight - 10 * S, "c2", "u2", Some("a1"));
    d.reply(midnight + 5 * S, "c2", "u2", "a1"); // today: the sample's ts counts
    let m = d.today("a1");
    assert_eq!(m.responses, 1);
    assert_eq!(m.max_ms, Some(15_000));
    assert_eq!(m.customers, 0, "u2 last wrote before midnight");
    assert_eq!(d.stats("a1", Window::Hour).metrics.responses, 2);
}

#[test]
fn today_follows_a_configured_zone_with_dst() {
    let mut s = settings(Clock::Event);
    s.timezone = TimeZone::get("America/New_York").unwrap();
    let mut d = Desk::with(s);
    // 2025-11-02 is 25 hours long in New York: 04:00Z to 05:00Z next day.
    let day_start = 1_762_056_000_000; // 2025-11-02T04:00:00Z
    d.customer(day_start + 24 * 60 * MIN + 10 * S, "c1", "u1", Some("a1"));
    d.reply(day_start + 24 * 60 * MIN + 20 * S, "c1", "u1", "a1"); // 24h in, same day
    assert_eq!(d.today("a1").responses, 1);
    d.customer(day_start + 25 * 60 * MIN, "c2", "u2", Some("a1"));
    d.reply(day_start + 25 * 60 * MIN + S, "c2", "u2", "a1"); // next day
    assert_eq!(d.today("a1").responses, 1);
    assert_eq!(d.today("a1").max_ms, Some(1000));
}

#[test]
fn rolling_windows_hold_samples_in_now_minus_w_to_now() {
    let mut d = Desk::new();
    // Samples at T0, T0+10m, T0+50m; now = T0+60m.
    for (i, at) in [0, 10 * MIN, 50 * MIN].iter().enumerate() {
        let conv = format!("c{i}");
        d.customer(T0 + at - S, &conv, &conv, Some("a1"));
        d.reply(T0 + at, &conv, &conv, "a1");
    }
    d.status(T0 + 60 * MIN, "s1", "a1", AgentStatus::Online);
    assert_eq!(
        d.stats("a1", Window::Hour).metrics.responses,
        2,
        "T0 is exactly now-1h: out"
    );
    assert_eq!(d.stats("a1", Window::Min15).metrics.responses, 1);
    assert_eq!(d.stats("a1", Window::Min5).metrics.responses, 0);
    assert_eq!(d.stats("a1", Window::Today).metrics.responses, 3);
    assert_eq!(d.stats("a1", Window::Hour).metrics.customers, 2);
}

#[test]
fn live_state_counts_open_conversations_and_waits() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.customer(T0 + 10 * S, "c2", "u2", Some("a1"));
    d.reply(T0 + 11 * S, "c2", "u2", "a1");
    d.customer(T0 + 20 * S, "c3", "u3", Some("a1"));
    d.status(T0 + 30 * S, "s1", "a1", AgentStatus::Busy);
    let live = d.stats("a1", Window::Today).live;
    assert_eq!(live.status, Some(AgentStatus::Busy));
    assert_eq!(live.open_conversations, 3);
    assert_eq!(live.waiting, 2);
    assert_eq!(live.oldest_wait_ms, 30_000);
    d.close(T0 + 31 * S, "c1");
    let live = d.stats("a1", Window::Today).live;
    assert_eq!(
        (live.open_conversations, live.waiting, live.oldest_wait_ms),
        (2, 1, 11_000)
    );
}

#[test]
fn agent_status_applies_in_every_shop() {
    let mut d = Desk::new();
    d.customer_in("s2", T0, "c1", "u1", Some("a1"));
    d.status(T0 + S, "s1", "a1", AgentStatus::Away);
    let s2 = d
        .engine
        .agent_stats(&"a1".into(), Window::Today, Some(&"s2".into()))
        .unwrap();
    assert_eq!(s2.live.status, Some(AgentStatus::Away));
}

#[test]
fn a_repeated_shop_and_id_is_counted_once() {
    let mut d = Desk::new();
    let event = Event {
        id: "x".into(),
        ts: T0,
        shop: "s1".into(),
        kind: EventKind::CustomerMessage {
            conversation: "c1".into(),
            customer: "u1".into(),
            agent: Some("a1".into()),
        },
    };
    assert_eq!(d.engine.apply(&event), Applied::Accepted);
    assert_eq!(d.engine.apply(&event), Applied::Duplicate);
    let mut other_shop = event.clone();
    other_shop.shop = "s2".into();
    assert_eq!(d.engine.apply(&other_shop), Applied::Accepted);
    assert_eq!(d.today("a1").customers, 2);
}

#[test]
fn a_duplicate_does_not_move_the_event_clock() {
    let mut d = Desk::new();
    let reply = Event {
        id: "r".into(),
        ts: T0 + 10 * S,
        shop: "s1".into(),
        kind: EventKind::AgentMessage {
            conversation: "c1".into(),
            customer: "u1".into(),
            agent: "a1".into(),
            auto: false,
        },
    };
    d.customer(T0, "c1", "u1", Some("a1"));
    assert_eq!(d.engine.apply(&reply), Applied::Accepted);
    d.customer(T0 + 20 * S, "c2", "u2", Some("a1"));
    // The same reply sent again a day later is acknowledged and changes
    // nothing: not `now`, so neither `today` nor the live wait.
    let mut resent = reply.clone();
    resent.ts += 86_400_000;
    assert_eq!(d.engine.apply(&resent), Applied::Duplicate);
    assert_eq!(d.engine.now(), T0 + 20 * S);
    let a1 = d.stats("a1", Window::Today);
    assert_eq!((a1.metrics.responses, a1.metrics.customers), (1, 2));
    assert_eq!((a1.live.waiting, a1.live.oldest_wait_ms), (1, 0));
}

#[test]
fn totals_of_shops_and_agents_add_the_partials() {
    let mut d = Desk::new();
    d.customer_in("s1", T0, "c1", "u1", Some("a1"));
    d.reply_in("s1", T0 + 10 * S, "c1", "u1", "a1", false);
    d.customer_in("s2", T0, "c1", "u1", Some("a1")); // shared seat: a1 serves s2 too
    d.reply_in("s2", T0 + 30 * S, "c1", "u1", "a1", false);
    d.customer_in("s1", T0, "c2", "u2", Some("a2"));
    d.reply_in("s1", T0 + 50 * S, "c2", "u2", "a2", false);
    let a1 = d.today("a1");
    assert_eq!((a1.responses, a1.customers, a1.avg_response_ms), (2, 2, Some(20_000.0)));
    let (s1, _) = d.engine.shop_acc(&"s1".into(), Window::Today).unwrap();
    let s1 = s1.metrics();
    assert_eq!((s1.responses, s1.customers, s1.avg_response_ms), (2, 2, Some(30_000.0)));
    let only_s2 = d
        .engine
        .agent_stats(&"a1".into(), Window::Today, Some(&"s2".into()))
        .unwrap();
    assert_eq!(only_s2.metrics.max_ms, Some(30_000));
}

// ---- §4 alerts ----

fn fast_thresholds() -> Settings {
    settings(Clock::Event)
}

#[test]
fn slow_average_raises_above_norm_with_min_samples() {
    let mut d = Desk::with(fast_thresholds());
    for i in 0..2 {
        let conv = format!("c{i}");
        d.customer(T0 + i * MIN, &conv, &conv, Some("a1"));
        d.reply(T0 + i * MIN + 70 * S, &conv, &conv, "a1");
    }
    assert!(
        d.alerts().iter().all(|a| a.1 != Rule::SlowAverage),
        "2 samples < min_samples"
    );
    d.customer(T0 + 2 * MIN, "c2", "c2", Some("a1"));
    d.reply(T0 + 2 * MIN + 70 * S, "c2", "c2", "a1");
    let slow: Vec<_> = d.alerts().into_iter().filter(|a| a.1 == Rule::SlowAverage).collect();
    assert_eq!(
        slow,
        only(Transition::Raised, Rule::SlowAverage, Severity::Warning, "a1")
    );
}

#[test]
fn slow_average_escalates_above_critical() {
    let mut d = Desk::with(fast_thresholds());
    for i in 0..3 {
        let conv = format!("c{i}");
        d.customer(T0 + i * MIN, &conv, &conv, Some("a1"));
        d.reply(T0 + i * MIN + 70 * S, &conv, &conv, "a1");
    }
    d.customer(T0 + 3 * MIN, "c9", "c9", Some("a1"));
    d.reply(T0 + 3 * MIN + 400 * S, "c9", "c9", "a1"); // avg (210+400)/4 = 152 s
    let slow: Vec<_> = d
        .alerts()
        .into_iter()
        .filter(|a| a.1 == Rule::SlowAverage)
        .map(|a| (a.0, a.2))
        .collect();
    assert_eq!(
        slow,
        vec![
            (Transition::Raised, Severity::Warning),
            (Transition::Escalated, Severity::Critical)
        ]
    );
    assert_eq!(
        d.engine.active_alerts().len(),
        1,
        "at most one active alert per (agent, shop, rule)"
    );
}

#[test]
fn slow_average_resolves_at_clear_or_when_the_window_empties() {
    let mut d = Desk::with(fast_thresholds());
    for i in 0..3 {
        let conv = format!("c{i}");
        d.customer(T0 + i * MIN, &conv, &conv, Some("a1"));
        d.reply(T0 + i * MIN + 70 * S, &conv, &conv, "a1");
    }
    d.alerts();
    // Between clear and norm: stays (hysteresis).
    d.customer(T0 + 4 * MIN, "c4", "c4", Some("a1"));
    d.reply(T0 + 4 * MIN + 40 * S, "c4", "c4", "a1"); // avg 62.5 s
    d.customer(T0 + 5 * MIN, "c5", "c5", Some("a1"));
    d.reply(T0 + 5 * MIN + 40 * S, "c5", "c5", "a1"); // avg 58 s
    assert!(d.alerts().is_empty(), "58 s is above clear_ms: still active");
    d.customer(T0 + 6 * MIN, "c6", "c6", Some("a1"));
    d.reply(T0 + 6 * MIN + 10 * S, "c6", "c6", "a1"); // avg 50 s = clear
    let resolved: Vec<_> = d.alerts().into_iter().map(|a| a.0).collect();
    assert_eq!(resolved, vec![Transition::Resolved]);

    // Raise again, then let the window empty with no event but time passing.
    for i in 10..13 {
        let conv = format!("c{i}");
        d.customer(T0 + i * MIN, &conv, &conv, Some("a1"));
        d.reply(T0 + i * MIN + 300 * S, &conv, &conv, "a1");
    }
    assert!(d.alerts().iter().any(|a| a.0 == Transition::Raised));
    d.engine.tick(T0 + 60 * MIN);
    assert!(
        d.alerts()
            .iter()
            .any(|a| a.0 == Transition::Resolved && a.1 == Rule::SlowAverage)
    );
}

/// The slow deadline of `agent`'s partial in the only shop.
fn slow_deadline(d: &Desk, agent: &str) -> Option<i64> {
    let (a, _) = d.engine.agent_info(&agent.into()).expect("a known agent");
    d.engine.shops[0].partials[&a].slow_deadline
}

#[test]
fn slow_average_raises_when_fast_samples_leave_the_window_and_slow_ones_remain() {
    let mut d = Desk::with(fast_thresholds());
    for i in 0..3 {
        let conv = format!("f{i}");
        d.customer(T0 + i * MIN, &conv, &conv, Some("a1"));
        d.reply(T0 + i * MIN + 10 * S, &conv, &conv, "a1");
    }
    for i in 5..8 {
        let conv = format!("s{i}");
        d.customer(T0 + i * MIN, &conv, &conv, Some("a1"));
        d.reply(T0 + i * MIN + 70 * S, &conv, &conv, "a1");
    }
    // (The 70 s waits raise and resolve `customer_waiting`: not looked at.)
    let slow_alerts =
        |d: &mut Desk| -> Vec<_> { d.alerts().into_iter().filter(|a| a.1 == Rule::SlowAverage).collect() };
    assert!(slow_alerts(&mut d).is_empty(), "(3 × 10 s + 3 × 70 s) / 6 = 40 s");
    // As the fast samples leave, the average goes to 46 s, then 55 s; the
    // last (at 2 min 10 s) leaves the window `(now - 15 min, now]` at 17
    // min 10 s, and the three samples of 70 s left raise it, with no new
    // event.
    d.engine.tick(T0 + 17 * MIN + 10 * S - 1);
    assert!(slow_alerts(&mut d).is_empty(), "still in the window");
    d.engine.tick(T0 + 17 * MIN + 10 * S);
    assert_eq!(
        slow_alerts(&mut d),
        only(Transition::Raised, Rule::SlowAverage, Severity::Warning, "a1")
    );
}

#[test]
fn samples_at_or_under_norm_with_no_alert_active_keep_no_slow_deadline() {
    let mut d = Desk::with(fast_thresholds());
    d.customer(T0, "c1", "u1", Some("a1"));
    d.reply(T0 + 60 * S, "c1", "u1", "a1"); // exactly norm: not slow
    assert_eq!(slow_deadline(&d, "a1"), None, "nothing can raise as samples leave");
    d.customer(T0 + MIN, "c2", "u2", Some("a1"));
    d.reply(T0 + MIN + 61 * S, "c2", "u2", "a1");
    assert_eq!(
        slow_deadline(&d, "a1"),
        Some(T0 + 60 * S + 15 * MIN),
        "the oldest leaves first"
    );
    // Once the slow sample has left, the deadline goes.
    d.engine.tick(T0 + MIN + 61 * S + 15 * MIN);
    assert_eq!(slow_deadline(&d, "a1"), None);
}

#[test]
fn a_restore_under_a_lower_norm_gives_a_window_its_slow_deadline() {
    let mut d = Desk::with(fast_thresholds());
    for i in 0..3 {
        let conv = format!("c{i}");
        d.customer(T0 + i * MIN, &conv, &conv, Some("a1"));
        d.reply(T0 + i * MIN + 40 * S, &conv, &conv, "a1");
    }
    assert_eq!(slow_deadline(&d, "a1"), None);
    let mut stricter = fast_thresholds();
    stricter.thresholds.norm_ms = 30_000;
    stricter.thresholds.clear_ms = 20_000;
    let bytes = d.engine.snapshot();
    d.engine = Engine::restore(Arc::new(stricter), &bytes).expect("the snapshot loads");
    assert_eq!(slow_deadline(&d, "a1"), Some(T0 + 40 * S + 15 * MIN));
}

#[test]
fn customer_waiting_raises_when_time_passes_with_no_new_event() {
    let mut d = Desk::with(settings(Clock::Wall));
    d.engine.tick(T0);
    d.customer(T0, "c1", "u1", Some("a1"));
    d.engine.tick(T0 + 60 * S);
    assert!(d.alerts().is_empty(), "60 s is not above norm");
    d.engine.tick(T0 + 60 * S + 1);
    assert_eq!(
        d.alerts(),
        only(Transition::Raised, Rule::CustomerWaiting, Severity::Warning, "a1")
    );
    d.engine.tick(T0 + 100 * S + 1);
    assert_eq!(
        d.alerts(),
        only(Transition::Escalated, Rule::CustomerWaiting, Severity::Critical, "a1")
    );
}

#[test]
fn an_answered_oldest_wait_queues_nothing_and_the_next_wait_still_raises_on_time() {
    let mut d = Desk::with(settings(Clock::Wall));
    d.engine.tick(T0);
    d.customer(T0, "c1", "u1", Some("a1"));
    d.customer(T0 + 30 * S, "c2", "u2", Some("a1"));
    d.reply(T0 + 40 * S, "c1", "u1", "a1");
    // The entry queued for c1's wait stays; none is added for c2's.
    assert_eq!(d.engine.wait_deadlines.len(), 1);
    // It comes due with c2's wait 30 s old: nothing raised, c2's queued.
    d.engine.tick(T0 + 60 * S + 1);
    assert!(d.alerts().is_empty());
    assert_eq!(d.engine.wait_deadlines.len(), 1);
    d.engine.tick(T0 + 90 * S);
    assert!(d.alerts().is_empty(), "c2 has waited 60 s, not above norm");
    d.engine.tick(T0 + 90 * S + 1);
    assert_eq!(
        d.alerts(),
        only(Transition::Raised, Rule::CustomerWaiting, Severity::Warning, "a1")
    );
}

#[test]
fn customer_waiting_resolves_when_no_wait_is_older_than_clear() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.customer(T0 + 30 * S, "c2", "u2", Some("a1"));
    d.customer(T0 + 70 * S, "c3", "u3", Some("a1"));
    assert_eq!(d.alerts().len(), 1, "raised when the clock passed T0+60s");
    d.reply(T0 + 75 * S, "c1", "u1", "a1"); // oldest now c2: 45 s ≤ clear
    assert_eq!(
        d.alerts().into_iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![Transition::Resolved]
    );
}

#[test]
fn customer_waiting_stays_between_clear_and_norm() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.customer(T0 + 10 * S, "c2", "u2", Some("a1"));
    d.status(T0 + 61 * S, "s1", "a1", AgentStatus::Online);
    assert_eq!(d.alerts().len(), 1);
    d.reply(T0 + 65 * S, "c1", "u1", "a1"); // oldest c2 at 55 s > clear
    assert!(d.alerts().is_empty());
}

#[test]
fn acking_records_who_and_is_reported_once() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.status(T0 + 61 * S, "s1", "a1", AgentStatus::Online);
    d.alerts();
    let id = d.engine.active_alerts()[0].id.clone();
    let acked = d.engine.ack_alert(&id, "sup").unwrap();
    assert_eq!(acked.acked_by.as_deref(), Some("sup"));
    d.engine.ack_alert(&id, "other").unwrap();
    let changes = d.alerts();
    assert_eq!(changes.len(), 1);
    assert_eq!(d.engine.alert(&id).unwrap().acked_by.as_deref(), Some("sup"));
    assert!(d.engine.ack_alert("nope", "sup").is_none());
}

#[test]
fn shop_override_changes_the_norm() {
    let mut s = settings(Clock::Event);
    s.shop_thresholds.insert(
        "s1".into(),
        ThresholdOverride {
            norm_ms: Some(20_000),
            clear_ms: Some(10_000),
            ..Default::default()
        },
    );
    let mut d = Desk::with(s);
    d.customer(T0, "c1", "u1", Some("a1"));
    d.status(T0 + 21 * S, "s1", "a1", AgentStatus::Online);
    assert_eq!(d.alerts().len(), 1);
    d.reply(T0 + 25 * S, "c1", "u1", "a1");
    assert_eq!(d.today("a1").slow_responses, 1);
}

#[test]
fn a_forgotten_customers_slot_is_reused_without_inheriting_marks() {
    let mut d = Desk::new();
    // Day 1: a1 serves c-old; a2 never sees it.
    d.customer(T0, "k1", "c-old", Some("a1"));
    d.reply(T0 + 10 * S, "k1", "c-old", "a1");
    d.close(T0 + 20 * S, "k1");
    // Two days later every mark of c-old is beyond retention; the hourly
    // clean-up forgets the customer and its slot can be reused.
    let later = T0 + 50 * 3_600_000;
    d.customer(later, "k2", "c-new", Some("a2"));
    d.engine.assert_consistent();
    d.reply(later + 5 * S, "k2", "c-new", "a2");
    d.customer(later + 2 * 3_600_000, "k3", "c-newer", Some("a2"));
    assert_eq!(d.engine.census().customers, 2, "c-old is forgotten");
    let a1 = d.stats("a1", Window::Hour);
    assert_eq!(a1.metrics.customers, 0, "a1 inherited no customer from a reused slot");
    let a2 = d.stats("a2", Window::Today);
    assert_eq!((a2.metrics.customers, a2.metrics.replied_customers), (2, 1));
    // The conversation of the reused slot belongs to its new customer.
    let waits = d.engine.open_waits(Some(&"a2".into()), None);
    assert_eq!(waits.len(), 1);
    assert_eq!(waits[0].customer.as_str(), "c-newer");
    d.engine.assert_consistent();
}

#[test]
fn a_customer_stamped_before_the_last_clean_up_is_still_forgotten_when_due() {
    const H: i64 = 3_600_000;
    let mut d = Desk::new();
    d.customer(T0, "k1", "u-old", Some("a1"));
    d.close(T0 + S, "k1");
    // 30 hours on, the pass forgets u-old; u-new is all the shop holds.
    d.customer(T0 + 30 * H, "k2", "u-new", Some("a1"));
    d.close(T0 + 30 * H + S, "k2");
    assert_eq!(d.engine.census().customers, 1);
    // A late event, stamped 25 hours before the clock: a customer older
    // than every one the last pass kept, with a mark for a1.
    d.customer(T0 + 5 * H, "k3", "u-late", Some("a1"));
    d.close(T0 + 5 * H + S, "k3");
    assert_eq!(d.engine.census().customers, 2);
    // The next hour's pass forgets it and its mark, 26 hours after its
    // last event, however recent the customers the pass before kept.
    d.customer(T0 + 31 * H + 2 * S, "k4", "u-next", Some("a2"));
    assert_eq!(d.engine.census().customers, 2, "u-new and u-next are left");
    d.engine.assert_consistent();
}

proptest::proptest! {
    /// The clean-up reads only the customers listed under its horizon's
    /// hour or before, and forgets exactly those a read of every customer
    /// forgets: late events (stamped before the last horizon), customers
    /// seen again or last seen right at a horizon, kept open or flagged,
    /// and horizons moving by less or more than an hour.
    #[test]
    fn forgetting_customers_by_hour_forgets_what_a_full_read_forgets(
        ops in proptest::collection::vec(
            (
                0u8..5,
                0u8..12,
                -45i64..3,
                // Half hours too, so that some customers are last seen
                // right at a horizon.
                proptest::prop_oneof![proptest::strategy::Strategy::prop_map(0i64..4, |k| k * 1_800_000), 0i64..5_400_000],
            ),
            0..300,
        )
    ) {
        const H: i64 = 3_600_000;
        let mut shop = Shop::new("s1".into());
        // id → (last_ts, open, flagged)
        let mut model: BTreeMap<String, (i64, u32, bool)> = BTreeMap::new();
        let (mut now, mut horizon) = (T0, T0 - 40 * H);
        for (op, who, hours, step) in ops {
            let id = format!("u{who}");
            let live = model.contains_key(&id);
            match op {
                0 | 1 => {
                    let ts = now + hours * H;
                    shop.customer(&id.as_str().into(), ts);
                    let entry = model.entry(id).or_insert((ts, 0, false));
                    entry.0 = entry.0.max(ts);
                }
                2 if live => {
                    let cu = shop.customer_ix.get(id_key(&id)).expect("live");
                    shop.customers[cu].open += 1;
                    model.get_mut(&id).expect("live").1 += 1;
                }
                3 if live && model[&id].1 > 0 => {
                    let cu = shop.customer_ix.get(id_key(&id)).expect("live");
                    shop.customers[cu].open -= 1;
                    model.get_mut(&id).expect("live").1 -= 1;
                }
                4 if live && who == 0 => {
                    let cu = shop.customer_ix.get(id_key(&id)).expect("live");
                    shop.customers[cu].flagged = true;
                    model.get_mut(&id).expect("live").2 = true;
                }
                _ => {
                    now += step;
                    horizon += step;
                    shop.forget_customers_through(horizon);
                    model.retain(|_, &mut (last_ts, open, flagged)| flagged || open > 0 || last_ts > horizon);
                }
            }
            let mut held: Vec<String> = shop.customers.iter().map(|(_, c)| c.id.as_str().to_owned()).collect();
            held.sort();
            proptest::prop_assert_eq!(held, model.keys().cloned().collect::<Vec<_>>());
            proptest::prop_assert_eq!(shop.customer_hours.all(), shop.customers.iter().map(|(cu, _)| cu).collect::<Vec<_>>());
            // The index names exactly the customers held, each at its slot.
            for who in 0..12 {
                let id = format!("u{who}");
                let found = shop.customer_ix.get(id_key(&id)).map(|cu| shop.customers[cu].id.as_str().to_owned());
                proptest::prop_assert_eq!(found, model.contains_key(&id).then_some(id));
            }
        }
    }
}

#[test]
fn a_flag_drops_the_waits_of_every_conversation_of_the_customer() {
    let mut d = Desk::new();
    d.customer(T0, "k1", "spam", Some("a1"));
    d.customer(T0 + S, "k2", "spam", None);
    d.customer(T0 + 2 * S, "k3", "fine", Some("a1"));
    d.flag(T0 + 3 * S, "spam");
    let a1 = d.stats("a1", Window::Today);
    assert_eq!(a1.live.waiting, 1, "only the unflagged customer still waits");
    assert_eq!(d.engine.shop_acc(&"s1".into(), Window::Today).unwrap().1.queued, 0);
    d.engine.assert_consistent();
}

#[test]
fn the_hourly_clean_up_is_spread_over_ticks_a_few_shops_each() {
    let mut d = Desk::with(settings(Clock::Wall));
    let shops = 3 * MAINTAIN_SHOPS_PER_TICK as usize - 4;
    for i in 0..shops {
        let shop = format!("s{i:02}");
        d.customer_in(&shop, T0, &format!("k{i}"), "u", Some("a1"));
        d.reply_in(&shop, T0 + S, &format!("k{i}"), "u", "a1", false);
    }
    d.engine.tick(T0 + S);
    let conversations = |d: &Desk| d.engine.census().conversations;
    assert_eq!(conversations(&d), shops);
    // A day later every conversation is idle; each tick cleans 8 shops.
    let later = T0 + 25 * 3_600_000;
    d.engine.tick(later);
    assert_eq!(conversations(&d), shops - MAINTAIN_SHOPS_PER_TICK as usize);
    d.engine.tick(later + 1);
    d.engine.tick(later + 2);
    assert_eq!(conversations(&d), 0, "the pass is done after three ticks");
    assert_eq!(d.stats("a1", Window::Today).live.open_conversations, 0);
    d.engine.assert_consistent();
}

#[test]
fn a_wait_is_dropped_only_by_a_close_or_a_flag_never_by_time() {
    let mut d = Desk::with(settings(Clock::Wall));
    d.customer(T0, "k1", "u1", Some("a1"));
    d.customer(T0, "k2", "u2", None);
    // Thirty hours on, with clean-up passes in between, both still wait.
    let later = T0 + 30 * 3_600_000;
    for h in 1..=30 {
        d.engine.tick(T0 + h * 3_600_000);
        d.engine.tick(T0 + h * 3_600_000 + 1);
        d.engine.tick(T0 + h * 3_600_000 + 2);
    }
    let a1 = d.stats("a1", Window::Today);
    assert_eq!((a1.live.waiting, a1.live.oldest_wait_ms), (1, 30 * 3_600_000 + 2));
    let shop = d.engine.shop_acc(&"s1".into(), Window::Today).unwrap().1;
    assert_eq!(shop.queued, 1);
    let active = d.engine.active_alerts();
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(
        (active[0].rule, active[0].severity),
        (Rule::CustomerWaiting, Severity::Critical)
    );
    // The late reply is one exact 30-hour sample, percentiles included.
    d.reply(later, "k1", "u1", "a1");
    let a1 = d.stats("a1", Window::Today);
    assert_eq!(a1.metrics.responses, 1);
    assert_eq!(a1.metrics.max_ms, Some(30 * 3_600_000));
    assert_eq!(a1.metrics.p50_ms, Some(30 * 3_600_000));
    d.engine.assert_consistent();
}

#[test]
fn a_restored_engine_rebuilds_each_conversations_customer_key() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.customer(T0 + S, "c2", "u2", Some("a1"));
    // The sender moves c2 to another customer id.
    d.customer(T0 + 2 * S, "c2", "u3", None);
    d.engine.assert_consistent();
    d.restart();
    d.reply(T0 + 3 * S, "c1", "u1", "a1");
    d.reply(T0 + 3 * S, "c2", "u3", "a1");
    d.engine.assert_consistent();
    assert_eq!(d.today("a1").replied_customers, 2);
}

/// Snapshots written before 2026-12-03 hold index keys made with the
/// duplicate set's fingerprint; restore keys every index anew.
#[test]
fn a_snapshot_keyed_by_another_build_restores_with_this_builds_keys() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.customer(T0 + S, "c2", "u2", Some("a2"));
    d.engine.rebuild_indexes(|id| super::dedup::fingerprint("", id));
    d.restart();
    d.reply(T0 + 3 * S, "c1", "u1", "a1");
    d.reply(T0 + 3 * S, "c2", "u2", "a2");
    d.engine.assert_consistent();
    assert_eq!((d.today("a1").responses, d.today("a2").responses), (1, 1));
    assert_eq!(d.engine.census().conversations, 2, "no conversation opened twice");
}

#[test]
fn waits_are_stored_as_the_start_to_count_map_they_were() {
    #[derive(serde::Serialize)]
    struct TreeWaits {
        starts: std::collections::BTreeMap<i64, u32>,
        count: u64,
    }
    let mut w = super::Waits::default();
    for start in [30, 10, 20, 10, 40] {
        w.add(start);
    }
    w.remove(40);
    assert_eq!(w.oldest(), Some(10));
    let tree = TreeWaits {
        starts: [(10, 2), (20, 1), (30, 1)].into_iter().collect(),
        count: 4,
    };
    let bytes = postcard::to_stdvec(&w).unwrap();
    assert_eq!(bytes, postcard::to_stdvec(&tree).unwrap());
    let back: super::Waits = postcard::from_bytes(&bytes).unwrap();
    assert_eq!((back.starts, back.count), (vec![(10, 2), (20, 1), (30, 1)], 4));
}

#[test]
fn a_conversation_holds_its_agents_mark_until_transfer_or_close() {
    let mut d = Desk::new();
    d.customer(T0, "k1", "u1", Some("a1"));
    d.reply(T0 + 10 * S, "k1", "u1", "a1");
    // A second open conversation of the same customer and agent writes to
    // the table: the first one holds the mark.
    d.customer(T0 + 20 * S, "k2", "u1", Some("a1"));
    d.reply(T0 + 30 * S, "k2", "u1", "a1");
    d.engine.assert_consistent();
    assert_eq!((d.today("a1").customers, d.today("a1").replied_customers), (1, 1));
    // Later times written through k1 count in the 5-minute window.
    d.customer(T0 + 20 * MIN, "k1", "u1", None);
    let five = d.stats("a1", Window::Min5).metrics;
    assert_eq!((five.customers, five.replied_customers), (1, 0));
    // A transfer releases the mark: a1 keeps the times, a2 starts its own.
    d.assign(T0 + 21 * MIN, "k1", "u1", "a2", Some("a1"));
    d.engine.assert_consistent();
    d.reply(T0 + 22 * MIN, "k1", "u1", "a2");
    let (a1, a2) = (d.stats("a1", Window::Min5).metrics, d.stats("a2", Window::Min5).metrics);
    assert_eq!((a1.customers, a1.replied_customers), (1, 0));
    assert_eq!((a2.customers, a2.replied_customers), (1, 1));
    // Closing k1 folds a2's times into its table.
    d.close(T0 + 23 * MIN, "k1");
    d.engine.assert_consistent();
    let a2 = d.stats("a2", Window::Min5).metrics;
    assert_eq!((a2.customers, a2.replied_customers), (1, 1));
    // A conversation moved to another customer id releases the old mark.
    d.customer(T0 + 24 * MIN, "k2", "u9", None);
    d.engine.assert_consistent();
    assert_eq!(d.stats("a1", Window::Min5).metrics.customers, 2);
}

#[test]
fn held_marks_outlive_the_clean_up_and_survive_a_snapshot() {
    let mut d = Desk::new();
    d.customer(T0, "k1", "u1", Some("a1"));
    // Two days later k1 still waits for its reply: the clean-up keeps the
    // mark its conversation holds, and the reply counts u1 as replied.
    let later = T0 + 50 * 3_600_000;
    d.customer(later, "k2", "u2", Some("a2"));
    d.engine.assert_consistent();
    d.restart();
    d.reply(later + S, "k1", "u1", "a1");
    assert_eq!(
        d.stats("a1", Window::Min5).metrics.customers,
        0,
        "u1 last wrote two days ago"
    );
    d.customer(later + 2 * S, "k1", "u1", None);
    let a1 = d.stats("a1", Window::Min5).metrics;
    assert_eq!((a1.customers, a1.replied_customers), (1, 1));
}

/// Random churn over few ids, so conversations change agents and
/// customers, close, reopen and outlive clean-ups: every index stays
/// consistent after every event.
#[test]
fn indexes_stay_consistent_under_random_churn() {
    let mut d = Desk::new();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut ts = T0;
    for _ in 0..4_000 {
        ts += if next(50) == 0 {
            7 * 3_600_000
        } else {
            next(20) as i64 * S
        };
        let conv = format!("k{}", next(6));
        let customer = format!("u{}", next(4));
        let agent = format!("a{}", next(3));
        match next(8) {
            0 | 1 => d.customer(ts, &conv, &customer, Some(&agent)),
            2 => d.customer(ts, &conv, &customer, None),
            3 | 4 => d.reply(ts, &conv, &customer, &agent),
            5 => d.assign(ts, &conv, &customer, &agent, Some("a0")),
            6 => d.close(ts, &conv),
            _ if next(10) == 0 => d.flag(ts, &customer),
            _ => d.order(ts, &customer, 100),
        }
        d.engine.assert_consistent();
    }
}

/// The agents and shops `take_dirty` names since it was last called.
fn taken(d: &mut Desk) -> (Vec<String>, Vec<String>) {
    let (agents, shops) = d.engine.take_dirty();
    let mut agents: Vec<String> = agents.iter().map(ToString::to_string).collect();
    agents.sort();
    let shops = shops.iter().map(ToString::to_string).collect();
    (agents, shops)
}

#[test]
fn take_dirty_names_each_changed_agent_once_per_call_and_again_after_a_change() {
    let mut d = Desk::new();
    d.customer_in("s1", T0, "c1", "u1", Some("a1"));
    d.customer_in("s2", T0, "c2", "u2", Some("a1"));
    d.reply_in("s1", T0 + S, "c1", "u1", "a1", false);
    d.customer_in("s1", T0 + S, "c3", "u3", Some("a2"));
    assert_eq!(
        taken(&mut d),
        (vec!["a1".into(), "a2".into()], vec!["s1".into(), "s2".into()])
    );
    assert_eq!(taken(&mut d), (vec![], vec![]), "nothing changed since");
    // The same partial changes again, in the next round.
    d.reply_in("s1", T0 + 2 * S, "c3", "u3", "a2", false);
    assert_eq!(taken(&mut d), (vec!["a2".into()], vec!["s1".into()]));
    d.reply_in("s2", T0 + 3 * S, "c2", "u2", "a1", false);
    assert_eq!(taken(&mut d).0, ["a1"]);
}

#[test]
fn changes_not_yet_taken_survive_a_snapshot_and_later_rounds_still_list() {
    let mut d = Desk::new();
    d.customer(T0, "c1", "u1", Some("a1"));
    d.customer(T0, "c2", "u2", Some("a2"));
    assert_eq!(taken(&mut d).0, ["a1", "a2"]);
    d.reply(T0 + S, "c1", "u1", "a1");
    d.restart();
    assert_eq!(taken(&mut d).0, ["a1"], "listed before the snapshot, named after it");
    d.reply(T0 + 2 * S, "c1", "u1", "a1");
    d.reply(T0 + 2 * S, "c2", "u2", "a2");
    assert_eq!(taken(&mut d).0, ["a1", "a2"]);
    assert_eq!(taken(&mut d).0, Vec::<String>::new());
}
