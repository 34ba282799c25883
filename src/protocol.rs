//! Wire types of the event contract (PROTOCOL.md §2) and their validation.
//! Bytes come in (one event, a JSON array or NDJSON); typed [`Event`]s and
//! per-event [`Rejection`]s come out. Nothing here panics on any input.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Largest `id` in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Largest `shop` in bytes.
pub const MAX_SHOP_BYTES: usize = 64;
/// Largest agent, customer, conversation or order id in bytes.
pub const MAX_REF_BYTES: usize = 128;
/// Largest accepted `ts` (9999-12-31T23:59:59.999Z), in ms since the epoch.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string; callers validate length at the edge.
            pub fn new(s: &str) -> Self {
                Self(Arc::from(s))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Asks the cache for the line of the id's shared counts,
            /// which dropping (or cloning) it writes. An `Arc<str>` keeps
            /// its two counts just before the text, so the text's first
            /// line is theirs unless the text starts a line. A hint only,
            /// for the engine's look-ahead.
            pub fn prefetch_counts(&self) {
                if let Some(first) = self.0.as_bytes().first() {
                    mem_prefetch::prefetch_read_data::<_, 3>(first);
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// An event id, unique per shop.
    EventId
);
id_type!(
    /// A shop (store) id.
    ShopId
);
id_type!(
    /// An agent (客服) id, unique across the deployment.
    AgentId
);
id_type!(
    /// A customer id, unique within a shop.
    CustomerId
);
id_type!(
    /// A conversation id, unique within a shop.
    ConversationId
);
id_type!(
    /// An order id.
    OrderId
);
id_type!(
    /// A team name from the roster.
    TeamId
);

/// An agent's desk status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Online,
    Busy,
    Away,
    Offline,
}

impl AgentStatus {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "online" => Self::Online,
            "busy" => Self::Busy,
            "away" => Self::Away,
            "offline" => Self::Offline,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Busy => "busy",
            Self::Away => "away",
            Self::Offline => "offline",
        }
    }
}

/// Why a customer was flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagReason {
    Spam,
    Ad,
}

/// One validated chat-desk event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per shop; `(shop, id)` identifies duplicates.
    pub id: EventId,
    /// Event time, ms since the Unix epoch (UTC).
    pub ts: i64,
    /// The shop the event belongs to.
    pub shop: ShopId,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The type-specific part of an [`Event`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    /// A customer message; `agent` is `None` while the conversation is queued.
    #[serde(rename = "chat.customer")]
    CustomerMessage {
        conversation: ConversationId,
        customer: CustomerId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<AgentId>,
    },
    /// An agent message; `auto` marks an auto-reply (自动回复).
    #[serde(rename = "chat.agent")]
    AgentMessage {
        conversation: ConversationId,
        customer: CustomerId,
        agent: AgentId,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        auto: bool,
    },
    /// The conversation is (re)assigned; `from_agent` makes it a transfer (转接).
    #[serde(rename = "conversation.assign")]
    Assign {
        conversation: ConversationId,
        customer: CustomerId,
        agent: AgentId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_agent: Option<AgentId>,
    },
    /// The conversation ended.
    #[serde(rename = "conversation.close")]
    Close { conversation: ConversationId },
    /// The agent's desk status, for every shop.
    #[serde(rename = "agent.status")]
    Status { agent: AgentId, status: AgentStatus },
    /// The customer is a spammer or advertiser in this shop.
    #[serde(rename = "customer.flag")]
    Flag { customer: CustomerId, reason: FlagReason },
    /// The customer paid an order of `amount` fen.
    #[serde(rename = "order.paid")]
    OrderPaid {
        order: OrderId,
        customer: CustomerId,
        amount: u64,
    },
}

impl EventKind {
    /// The wire name of the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::CustomerMessage { .. } => "chat.customer",
            Self::AgentMessage { .. } => "chat.agent",
            Self::Assign { .. } => "conversation.assign",
            Self::Close { .. } => "conversation.close",
            Self::Status { .. } => "agent.status",
            Self::Flag { .. } => "customer.flag",
            Self::OrderPaid { .. } => "order.paid",
        }
    }
}

impl Event {
    /// The event as one line of JSON, in the wire format.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialize: all keys are strings")
    }
}

/// A rejected event: its position in the batch, its id if it had one, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// 0-based position in the batch; `None` when the batch could not be split.
    pub index: Option<usize>,
    /// The event's `id`, when it had a readable one.
    pub id: Option<String>,
    /// What was wrong, naming the field.
    pub error: String,
}

/// A note about an accepted event (an ignored unknown field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// 0-based position in the batch.
    pub index: usize,
    /// The event's `id`.
    pub id: String,
    /// What was ignored.
    pub warning: String,
}

/// What the edge does with a field the event's type does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// Accept the event and report the field in `warnings`.
    #[default]
    Warn,
    /// Reject the event.
    Reject,
}

/// A parsed batch: good events with their positions, and the bad ones.
#[derive(Debug, Default)]
pub struct Batch {
    /// Valid events with their 0-based index in the batch.
    pub events: Vec<(usize, Event)>,
    /// Events that were refused.
    pub rejected: Vec<Rejection>,
    /// Accepted events with ignored fields.
    pub warnings: Vec<Warning>,
}

impl Batch {
    /// Number of items seen in the batch (good and bad).
    pub fn len(&self) -> usize {
        self.events.len() + self.rejected.len()
    }

    /// True when the batch held no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reason text for one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    /// The JSON field name (or `(event)` for the object as a whole).
    pub field: &'static str,
    /// What was wrong with it.
    pub reason: String,
}

fn field_err(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

/// Parses a body or frame (array, single object or NDJSON) into a [`Batch`].
pub fn parse_batch(bytes: &[u8], unknown: UnknownFields) -> Batch {
    // A byte-order mark that some Windows tools put at the start of a UTF-8
    // file is not part of the first event.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut batch = Batch::default();
    let trimmed = trim_ascii_start(bytes);
    // The parser skips the values of fields it does not read without
    // checking their bytes, so the text is checked whole first: bad UTF-8
    // anywhere in an event, an unknown field included, refuses that event.
    let text = std::str::from_utf8(trimmed).is_ok();
    match trimmed.first() {
        None => {}
        Some(b'[') if text => parse_array(trimmed, unknown, &mut batch),
        Some(b'[') => parse_damaged_array(trimmed, unknown, &mut batch),
        Some(_) if !text && !is_one_value(trimmed) => parse_ndjson(bytes, unknown, &mut batch),
        // One object (that may span lines) with bad bytes: refused, the field named.
        Some(_) if !text => parse_item(0, trimmed, unknown, &mut batch),
        Some(_) => {
            // One object that may span lines, or NDJSON.
            let single = {
                let mut de = serde_json::Deserializer::from_slice(trimmed);
                RawEvent::deserialize(&mut de).and_then(|raw| de.end().map(|()| raw))
            };
            match single {
                Ok(raw) => push(&mut batch, 0, raw, unknown),
                Err(_) => parse_ndjson(bytes, unknown, &mut batch),
            }
        }
    }
    batch
}

/// Whether `bytes`, read with bad UTF-8 replaced, is one JSON value (an
/// object spanning lines) rather than NDJSON.
fn is_one_value(bytes: &[u8]) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(&String::from_utf8_lossy(bytes)).is_ok()
}

fn trim_ascii_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Parses the array `bytes`, which are valid UTF-8.
fn parse_array(bytes: &[u8], unknown: UnknownFields, batch: &mut Batch) {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = RawArray.deserialize(&mut de).and_then(|raws| de.end().map(|()| raws));
    match result {
        Ok(raws) => {
            for (index, raw) in raws.into_iter().enumerate() {
                push(batch, index, raw, unknown);
            }
        }
        Err(e) => batch.rejected.push(Rejection {
            index: None,
            id: None,
            error: format!("the array is not well-formed JSON, no event taken: {e}"),
        }),
    }
}

/// Parses the array `bytes`, which hold bad UTF-8: item by item, so the
/// items without bad bytes are still taken.
fn parse_damaged_array(bytes: &[u8], unknown: UnknownFields, batch: &mut Batch) {
    match split_array(bytes) {
        Some(items) => {
            for (index, item) in items.into_iter().enumerate() {
                parse_item(index, item, unknown, batch);
            }
        }
        None => {
            let at = std::str::from_utf8(bytes).err().map_or(0, |e| e.valid_up_to());
            batch.rejected.push(Rejection {
                index: None,
                id: None,
                error: format!("the array is not well-formed JSON and not valid UTF-8 (byte {at}), no event taken"),
            });
        }
    }
}

/// The items of the JSON array `bytes` (starting at its `[`), found from
/// its structure alone (strings, escapes, nesting), so an array with bad
/// UTF-8 in some items can be read item by item; `None` if the structure
/// itself is broken.
fn split_array(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut items = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut start) = (0usize, false, false, 1);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b',' if depth == 1 => {
                items.push(&bytes[start..i]);
                start = i + 1;
            }
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    let last = &bytes[start..i];
                    if !(items.is_empty() && last.iter().all(u8::is_ascii_whitespace)) {
                        items.push(last);
                    }
                    let rest_blank = bytes[i + 1..].iter().all(u8::is_ascii_whitespace);
                    return (b == b']' && rest_blank).then_some(items);
                }
            }
            _ => {}
        }
    }
    None
}

/// Parses one NDJSON line or array item at `index`.
fn parse_item(index: usize, item: &[u8], unknown: UnknownFields, batch: &mut Batch) {
    match std::str::from_utf8(item) {
        Err(e) => batch.rejected.push(bad_utf8(index, item, e.valid_up_to())),
        Ok(text) => match serde_json::from_str::<RawEvent<'_>>(text) {
            Ok(raw) => push(batch, index, raw, unknown),
            Err(e) => batch.rejected.push(Rejection {
                index: Some(index),
                id: None,
                error: format!("malformed JSON: {e}"),
            }),
        },
    }
}

/// The rejection of an item that is not UTF-8 from byte `at`: it names the
/// field whose text holds the bad bytes (from a lossy reading of the item)
/// and the event's id if that is intact.
fn bad_utf8(index: usize, item: &[u8], at: usize) -> Rejection {
    let lossy = String::from_utf8_lossy(item);
    let fields: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&lossy).ok();
    let damaged = |text: &str| text.contains(char::REPLACEMENT_CHARACTER);
    let field = fields.as_ref().and_then(|m| {
        m.iter()
            .find(|(k, v)| damaged(k) || v.as_str().is_some_and(damaged))
            .map(|(k, _)| k.clone())
    });
    let id = fields
        .as_ref()
        .and_then(|m| m.get("id")?.as_str().filter(|id| !damaged(id)).map(str::to_owned));
    let error = match field {
        Some(f) => format!("field `{f}`: not valid UTF-8 (byte {at} of the event)"),
        None => format!("not valid UTF-8 (byte {at} of the event)"),
    };
    Rejection {
        index: Some(index),
        id,
        error,
    }
}

fn parse_ndjson(bytes: &[u8], unknown: UnknownFields, batch: &mut Batch) {
    let mut index = 0;
    for line in bytes.split(|&b| b == b'\n') {
        let line = trim_ascii_start(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        parse_item(index, line, unknown, batch);
        index += 1;
    }
}

fn push(batch: &mut Batch, index: usize, raw: RawEvent<'_>, unknown: UnknownFields) {
    let id = match &raw.id {
        Some(Loose::Str(s)) => Some(s.to_string()),
        _ => None,
    };
    match raw.validate(unknown) {
        Ok((event, ignored)) => {
            if !ignored.is_empty() {
                batch.warnings.push(Warning {
                    index,
                    id: event.id.to_string(),
                    warning: format!("unknown field(s) ignored: {}", ignored.join(", ")),
                });
            }
            batch.events.push((index, event));
        }
        Err(e) => batch.rejected.push(Rejection {
            index: Some(index),
            id,
            error: e.to_string(),
        }),
    }
}

/// Parses and validates exactly one event (tests, replay).
pub fn parse_event(text: &str) -> Result<Event, String> {
    let raw: RawEvent<'_> = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    raw.validate(UnknownFields::Warn)
        .map(|(event, _)| event)
        .map_err(|e| e.to_string())
}

/// A JSON value of any type, kept only as far as validation needs it.
#[derive(Debug)]
enum Loose<'a> {
    Str(Cow<'a, str>),
    Int(i128),
    Float,
    /// A whole number beyond 64 bits (JSON parsers read it as a float).
    HugeInt,
    Bool(bool),
    Null,
    Array,
    Object,
}

impl Loose<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Loose::Str(_) => "a string",
            Loose::Int(_) => "an integer",
            Loose::Float => "a non-integer number",
            Loose::HugeInt => "an integer out of range",
            Loose::Bool(_) => "a boolean",
            Loose::Null => "null",
            Loose::Array => "an array",
            Loose::Object => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Loose<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Loose::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Loose::Int(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // serde_json hands 2^70 and 1e30 over as floats.
        Ok(if v.fract() == 0.0 && v.abs() >= 9.2e18 {
            Loose::HugeInt
        } else {
            Loose::Float
        })
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Loose::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Object)
    }
}

/// A map key that borrows when it can.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// An event as read off the wire: every field optional and loosely typed, so
/// that only JSON syntax can fail the parse and validation can name fields.
#[derive(Debug, Default)]
struct RawEvent<'a> {
    not_object: Option<&'static str>,
    id: Option<Loose<'a>>,
    type_: Option<Loose<'a>>,
    ts: Option<Loose<'a>>,
    shop: Option<Loose<'a>>,
    conversation: Option<Loose<'a>>,
    customer: Option<Loose<'a>>,
    agent: Option<Loose<'a>>,
    from_agent: Option<Loose<'a>>,
    auto: Option<Loose<'a>>,
    status: Option<Loose<'a>>,
    reason: Option<Loose<'a>>,
    order: Option<Loose<'a>>,
    amount: Option<Loose<'a>>,
    duplicate: Option<&'static str>,
    unknown: Vec<String>,
}

const FIELDS: [&str; 13] = [
    "id",
    "type",
    "ts",
    "shop",
    "conversation",
    "customer",
    "agent",
    "from_agent",
    "auto",
    "status",
    "reason",
    "order",
    "amount",
];

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawEventVisitor)
    }
}

struct RawEventVisitor;

impl RawEventVisitor {
    fn not_object<'a>(kind: &'static str) -> RawEvent<'a> {
        RawEvent {
            not_object: Some(kind),
            ..RawEvent::default()
        }
    }
}

impl<'de> Visitor<'de> for RawEventVisitor {
    type Value = RawEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEvent::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let slot = match &*key {
                "id" => &mut raw.id,
                "type" => &mut raw.type_,
                "ts" => &mut raw.ts,
                "shop" => &mut raw.shop,
                "conversation" => &mut raw.conversation,
                "customer" => &mut raw.customer,
                "agent" => &mut raw.agent,
                "from_agent" => &mut raw.from_agent,
                "auto" => &mut raw.auto,
                "status" => &mut raw.status,
                "reason" => &mut raw.reason,
                "order" => &mut raw.order,
                "amount" => &mut raw.amount,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    if raw.unknown.len() < 8 {
                        raw.unknown.push(truncate(&key, 64));
                    }
                    continue;
                }
            };
            let value = map.next_value::<Loose<'de>>()?;
            if slot.is_some() && raw.duplicate.is_none() {
                raw.duplicate = FIELDS.iter().copied().find(|f| *f == &*key);
            }
            *slot = Some(value);
        }
        Ok(raw)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::not_object("an array"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Self::not_object("a string"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Self::not_object("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Self::not_object("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Self::not_object("a number"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Self::not_object("a boolean"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Self::not_object("null"))
    }
}

struct RawArray;

impl<'de> DeserializeSeed<'de> for RawArray {
    type Value = Vec<RawEvent<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<RawEvent<'de>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(4096));
                while let Some(raw) = seq.next_element::<RawEvent<'de>>()? {
                    out.push(raw);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The fields each type defines beyond the common four.
fn type_fields(type_name: &str) -> &'static [&'static str] {
    match type_name {
        "chat.customer" => &["conversation", "customer", "agent"],
        "chat.agent" => &["conversation", "customer", "agent", "auto"],
        "conversation.assign" => &["conversation", "customer", "agent", "from_agent"],
        "conversation.close" => &["conversation"],
        "agent.status" => &["agent", "status"],
        "customer.flag" => &["customer", "reason"],
        "order.paid" => &["order", "customer", "amount"],
        _ => &[],
    }
}

impl RawEvent<'_> {
    fn validate(self, unknown: UnknownFields) -> Result<(Event, Vec<String>), FieldError> {
        if let Some(kind) = self.not_object {
            return Err(field_err("(event)", format!("expected a JSON object, got {kind}")));
        }
        if let Some(field) = self.duplicate {
            return Err(field_err(field, "given more than once"));
        }
        let id = EventId::new(text(&self.id, "id", MAX_EVENT_ID_BYTES)?);
        let type_name = text(&self.type_, "type", 64)?;
        let ts = timestamp(&self.ts)?;
        let shop = ShopId::new(text(&self.shop, "shop", MAX_SHOP_BYTES)?);
        let allowed = type_fields(type_name);
        let mut ignored = self.unknown.clone();
        for (name, present) in self.typed_fields() {
            if present && !allowed.contains(&name) {
                ignored.push(name.to_owned());
            }
        }
        if !ignored.is_empty() && unknown == UnknownFields::Reject {
            return Err(field_err(
                "(event)",
                format!("unknown field(s) for `{type_name}`: {}", ignored.join(", ")),
            ));
        }
        let kind = match type_name {
            "chat.customer" => EventKind::CustomerMessage {
                conversation: ConversationId::new(reference(&self.conversation, "conversation")?),
                customer: CustomerId::new(reference(&self.customer, "customer")?),
                agent: optional_reference(&self.agent, "agent")?.map(AgentId::new),
            },
            "chat.agent" => EventKind::AgentMessage {
                conversation: ConversationId::new(reference(&self.conversation, "conversation")?),
                customer: CustomerId::new(reference(&self.customer, "customer")?),
                agent: AgentId::new(reference(&self.agent, "agent")?),
                auto: boolean(&self.auto, "auto")?.unwrap_or(false),
            },
            "conversation.assign" => EventKind::Assign {
                conversation: ConversationId::new(reference(&self.conversation, "conversation")?),
                customer: CustomerId::new(reference(&self.customer, "customer")?),
                agent: AgentId::new(reference(&self.agent, "agent")?),
                from_agent: optional_reference(&self.from_agent, "from_agent")?.map(AgentId::new),
            },
            "conversation.close" => EventKind::Close {
                conversation: ConversationId::new(reference(&self.conversation, "conversation")?),
            },
            "agent.status" => EventKind::Status {
                agent: AgentId::new(reference(&self.agent, "agent")?),
                status: {
                    let s = text(&self.status, "status", 32)?;
                    AgentStatus::parse(s).ok_or_else(|| {
                        field_err(
                            "status",
                            format!("unknown status `{}` (online, busy, away, offline)", truncate(s, 32)),
                        )
                    })?
                },
            },
            "customer.flag" => EventKind::Flag {
                customer: CustomerId::new(reference(&self.customer, "customer")?),
                reason: match text(&self.reason, "reason", 32)? {
                    "spam" => FlagReason::Spam,
                    "ad" => FlagReason::Ad,
                    other => {
                        return Err(field_err(
                            "reason",
                            format!("unknown reason `{}` (spam, ad)", truncate(other, 32)),
                        ));
                    }
                },
            },
            "order.paid" => EventKind::OrderPaid {
                order: OrderId::new(reference(&self.order, "order")?),
                customer: CustomerId::new(reference(&self.customer, "customer")?),
                amount: amount(&self.amount)?,
            },
            other => {
                return Err(field_err(
                    "type",
                    format!("unknown event type `{}`", truncate(other, 64)),
                ));
            }
        };
        Ok((Event { id, ts, shop, kind }, ignored))
    }

    fn typed_fields(&self) -> [(&'static str, bool); 9] {
        let present = |v: &Option<Loose<'_>>| matches!(v, Some(l) if !matches!(l, Loose::Null));
        [
            ("conversation", present(&self.conversation)),
            ("customer", present(&self.customer)),
            ("agent", present(&self.agent)),
            ("from_agent", present(&self.from_agent)),
            ("auto", present(&self.auto)),
            ("status", present(&self.status)),
            ("reason", present(&self.reason)),
            ("order", present(&self.order)),
            ("amount", present(&self.amount)),
        ]
    }
}

fn text<'v>(value: &'v Option<Loose<'_>>, field: &'static str, max: usize) -> Result<&'v str, FieldError> {
    match value {
        None | Some(Loose::Null) => Err(field_err(field, "missing")),
        Some(Loose::Str(s)) if s.is_empty() => Err(field_err(field, "empty")),
        Some(Loose::Str(s)) if s.len() > max => {
            Err(field_err(field, format!("too long: {} bytes (limit {max})", s.len())))
        }
        Some(Loose::Str(s)) => Ok(s),
        Some(other) => Err(field_err(field, format!("expected a string, got {}", other.kind()))),
    }
}

fn reference<'v>(value: &'v Option<Loose<'_>>, field: &'static str) -> Result<&'v str, FieldError> {
    text(value, field, MAX_REF_BYTES)
}

fn optional_reference<'v>(value: &'v Option<Loose<'_>>, field: &'static str) -> Result<Option<&'v str>, FieldError> {
    match value {
        None | Some(Loose::Null) => Ok(None),
        _ => reference(value, field).map(Some),
    }
}

fn boolean(value: &Option<Loose<'_>>, field: &'static str) -> Result<Option<bool>, FieldError> {
    match value {
        None | Some(Loose::Null) => Ok(None),
        Some(Loose::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(field_err(field, format!("expected a boolean, got {}", other.kind()))),
    }
}

fn timestamp(value: &Option<Loose<'_>>) -> Result<i64, FieldError> {
    match value {
        None | Some(Loose::Null) => Err(field_err("ts", "missing")),
        Some(Loose::Int(n)) if (0..=i128::from(MAX_TS_MS)).contains(n) => {
            Ok(i64::try_from(*n).expect("range checked above"))
        }
        Some(Loose::Int(n)) => Err(field_err(
            "ts",
            format!("{n} is out of range (0..={MAX_TS_MS} ms since epoch)"),
        )),
        Some(other) => Err(field_err(
            "ts",
            format!("expected an integer (ms since epoch), got {}", other.kind()),
        )),
    }
}

fn amount(value: &Option<Loose<'_>>) -> Result<u64, FieldError> {
    match value {
        None | Some(Loose::Null) => Err(field_err("amount", "missing")),
        Some(Loose::Int(n)) if *n < 0 => Err(field_err("amount", format!("must be ≥ 0, got {n}"))),
        Some(Loose::Int(n)) => u64::try_from(*n)
            .ok()
            .filter(|v| *v <= i64::MAX as u64)
            .ok_or_else(|| field_err("amount", format!("{n} is too large"))),
        Some(other) => Err(field_err(
            "amount",
            format!("expected an integer (fen), got {}", other.kind()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Batch {
        parse_batch(s.as_bytes(), UnknownFields::Warn)
    }

    #[test]
    fn parses_every_type() {
        let lines = [
            r#"{"id":"1","type":"chat.customer","ts":1,"shop":"s","conversation":"c","customer":"u"}"#,
            r#"{"id":"2","type":"chat.agent","ts":2,"shop":"s","conversation":"c","customer":"u","agent":"a","auto":true}"#,
            r#"{"id":"3","type":"conversation.assign","ts":3,"shop":"s","conversation":"c","customer":"u","agent":"b","from_agent":"a"}"#,
            r#"{"id":"4","type":"conversation.close","ts":4,"shop":"s","conversation":"c"}"#,
            r#"{"id":"5","type":"agent.status","ts":5,"shop":"s","agent":"a","status":"busy"}"#,
            r#"{"id":"6","type":"customer.flag","ts":6,"shop":"s","customer":"u","reason":"ad"}"#,
            r#"{"id":"7","type":"order.paid","ts":7,"shop":"s","order":"o","customer":"u","amount":1999}"#,
        ];
        let batch = one(&lines.join("\n"));
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        assert_eq!(batch.events.len(), 7);
        assert!(batch.warnings.is_empty());
        for (i, (index, event)) in batch.events.iter().enumerate() {
            assert_eq!(*index, i);
            // Round trip through the wire format.
            assert_eq!(&parse_event(&event.to_json()).unwrap(), event);
        }
    }

    #[test]
    fn array_single_and_pretty_object() {
        let array = one(
            r#"[{"id":"1","type":"conversation.close","ts":1,"shop":"s","conversation":"c"},{"id":"2","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}]"#,
        );
        assert_eq!(array.events.len(), 2);
        let pretty = one(
            "{\n  \"id\": \"1\",\n  \"type\": \"conversation.close\",\n  \"ts\": 1,\n  \"shop\": \"s\",\n  \"conversation\": \"c\"\n}\n",
        );
        assert_eq!(pretty.events.len(), 1, "{:?}", pretty.rejected);
    }

    #[test]
    fn bad_events_name_field_and_position_and_keep_the_rest() {
        let body = [
            r#"{"id":"ok1","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}"#,
            r#"{"id":"bad-ts","type":"conversation.close","ts":"1","shop":"s","conversation":"c"}"#,
            r#"{"id":"bad-type","type":"chat.nope","ts":1,"shop":"s"}"#,
            r#"{"id":"no-conv","type":"conversation.close","ts":1,"shop":"s"}"#,
            r#"not json"#,
            r#"{"id":"neg","type":"order.paid","ts":1,"shop":"s","order":"o","customer":"u","amount":-1}"#,
            r#"{"id":"float","type":"order.paid","ts":1.5,"shop":"s","order":"o","customer":"u","amount":1}"#,
            r#"{"id":"ok2","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}"#,
        ]
        .join("\n");
        let batch = one(&body);
        let ids: Vec<_> = batch.events.iter().map(|(_, e)| e.id.as_str()).collect();
        assert_eq!(ids, ["ok1", "ok2"]);
        let errors: Vec<_> = batch
            .rejected
            .iter()
            .map(|r| (r.index, r.id.as_deref(), r.error.as_str()))
            .collect();
        assert_eq!(
            errors[0],
            (
                Some(1),
                Some("bad-ts"),
                "field `ts`: expected an integer (ms since epoch), got a string"
            )
        );
        assert_eq!(
            errors[1],
            (
                Some(2),
                Some("bad-type"),
                "field `type`: unknown event type `chat.nope`"
            )
        );
        assert_eq!(errors[2], (Some(3), Some("no-conv"), "field `conversation`: missing"));
        assert_eq!(errors[3].0, Some(4));
        assert!(errors[3].2.starts_with("malformed JSON"));
        assert_eq!(errors[4], (Some(5), Some("neg"), "field `amount`: must be ≥ 0, got -1"));
        assert_eq!(
            errors[5].2,
            "field `ts`: expected an integer (ms since epoch), got a non-integer number"
        );
    }

    #[test]
    fn invalid_utf8_line_is_rejected_alone() {
        let mut body = br#"{"id":"a","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}"#.to_vec();
        body.extend_from_slice(b"\n{\"id\":\"b\xff\xfe\",\"type\":\"conversation.close\"}\n");
        body.extend_from_slice(br#"{"id":"c","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}"#);
        let batch = parse_batch(&body, UnknownFields::Warn);
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(batch.rejected[0].index, Some(1));
        assert_eq!(
            batch.rejected[0].error,
            "field `id`: not valid UTF-8 (byte 8 of the event)"
        );
    }

    #[test]
    fn invalid_utf8_in_an_array_item_rejects_that_item_alone() {
        let good = |id: &str| {
            format!(r#"{{"id":"{id}","type":"conversation.close","ts":1,"shop":"s","conversation":"c, [x]"}}"#)
        };
        let mut body = format!("[ {},\n", good("a")).into_bytes();
        body.extend_from_slice(b"{\"id\":\"b\",\"type\":\"chat.customer\",\"customer\":\"\xff\\\"\"}, ");
        body.extend_from_slice(format!("{} ]", good("c")).as_bytes());
        let batch = parse_batch(&body, UnknownFields::Warn);
        let ids: Vec<(usize, &str)> = batch.events.iter().map(|(i, e)| (*i, e.id.as_str())).collect();
        assert_eq!(ids, vec![(0, "a"), (2, "c")]);
        assert_eq!(batch.rejected.len(), 1);
        let r = &batch.rejected[0];
        assert_eq!((r.index, r.id.as_deref()), (Some(1), Some("b")));
        assert!(r.error.starts_with("field `customer`: not valid UTF-8"), "{}", r.error);
        // A broken structure still refuses the whole array, saying so.
        let batch = parse_batch(b"[{\"id\":\"\xff\"", UnknownFields::Warn);
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(batch.rejected[0].index, None);
        assert!(batch.events.is_empty());
    }

    #[test]
    fn invalid_utf8_in_a_field_not_read_still_rejects_the_event() {
        let bad = b"{\"id\":\"b\",\"type\":\"conversation.close\",\"ts\":1,\"shop\":\"s\",\"conversation\":\"c\",\"note\":\"\xff\xfe\"}";
        let good = br#"{"id":"a","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}"#;
        let spread = [b"{\n".as_slice(), &bad[1..]].concat();
        for (body, index) in [
            (bad.to_vec(), 0),
            (spread, 0),
            ([good.as_slice(), b"\n", bad].concat(), 1),
            ([b"[".as_slice(), good, b",", bad, b"]"].concat(), 1),
        ] {
            let batch = parse_batch(&body, UnknownFields::Warn);
            assert_eq!(batch.events.len(), index, "{}", String::from_utf8_lossy(&body));
            assert_eq!(batch.rejected.len(), 1);
            let r = &batch.rejected[0];
            assert_eq!((r.index, r.id.as_deref()), (Some(index), Some("b")));
            assert!(r.error.starts_with("field `note`: not valid UTF-8"), "{}", r.error);
        }
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        let event = br#"{"id":"a","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}"#;
        for body in [
            [b"\xEF\xBB\xBF".as_slice(), event].concat(),
            [b"\xEF\xBB\xBF[".as_slice(), event, b"]"].concat(),
            [b"\xEF\xBB\xBF".as_slice(), event, b"\n", event].concat(),
        ] {
            let batch = parse_batch(&body, UnknownFields::Warn);
            assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
            assert!(!batch.events.is_empty());
        }
    }

    #[test]
    fn a_number_beyond_64_bits_is_named_out_of_range() {
        let body = br#"{"id":"o","type":"order.paid","ts":1,"shop":"s","order":"x","customer":"u","amount":1180591620717411303424}"#;
        let batch = parse_batch(body, UnknownFields::Warn);
        let error = &batch.rejected[0].error;
        assert!(
            error.starts_with("field `amount`") && error.contains("out of range"),
            "{error}"
        );
    }

    #[test]
    fn size_limits_per_field() {
        let long_id = "x".repeat(129);
        let long_shop = "s".repeat(65);
        let b = one(&format!(
            r#"{{"id":"{long_id}","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}}"#
        ));
        assert_eq!(b.rejected[0].error, "field `id`: too long: 129 bytes (limit 128)");
        let b = one(&format!(
            r#"{{"id":"1","type":"conversation.close","ts":1,"shop":"{long_shop}","conversation":"c"}}"#
        ));
        assert_eq!(b.rejected[0].error, "field `shop`: too long: 65 bytes (limit 64)");
        let ok_id = "x".repeat(128);
        let b = one(&format!(
            r#"{{"id":"{ok_id}","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}}"#
        ));
        assert_eq!(b.events.len(), 1);
        let b = one(r#"{"id":"","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}"#);
        assert_eq!(b.rejected[0].error, "field `id`: empty");
    }

    #[test]
    fn unknown_fields_warn_or_reject() {
        let body = r#"{"id":"1","type":"chat.agent","ts":1,"shop":"s","conversation":"c","customer":"u","agent":"a","atuo":true,"status":"online"}"#;
        let warn = one(body);
        assert_eq!(warn.events.len(), 1);
        assert_eq!(warn.warnings[0].warning, "unknown field(s) ignored: atuo, status");
        let reject = parse_batch(body.as_bytes(), UnknownFields::Reject);
        assert_eq!(reject.events.len(), 0);
        assert!(reject.rejected[0].error.contains("atuo"));
    }

    #[test]
    fn broken_array_is_one_rejection_without_index() {
        let b = one(r#"[{"id":"1","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}, {"#);
        assert!(b.events.is_empty());
        assert_eq!(b.rejected.len(), 1);
        assert_eq!(b.rejected[0].index, None);
    }

    #[test]
    fn array_element_that_is_not_an_object() {
        let b = one(r#"[1, {"id":"1","type":"conversation.close","ts":1,"shop":"s","conversation":"c"}]"#);
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.rejected[0].index, Some(0));
        assert_eq!(
            b.rejected[0].error,
            "field `(event)`: expected a JSON object, got a number"
        );
    }

    #[test]
    fn null_optional_agent_is_queued_and_null_required_is_missing() {
        let b = one(
            r#"{"id":"1","type":"chat.customer","ts":1,"shop":"s","conversation":"c","customer":"u","agent":null}"#,
        );
        assert!(matches!(
            b.events[0].1.kind,
            EventKind::CustomerMessage { agent: None, .. }
        ));
        let b =
            one(r#"{"id":"1","type":"chat.agent","ts":1,"shop":"s","conversation":"c","customer":"u","agent":null}"#);
        assert_eq!(b.rejected[0].error, "field `agent`: missing");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let b = one(r#"{"id":"1","type":"conversation.close","ts":1,"ts":2,"shop":"s","conversation":"c"}"#);
        assert_eq!(b.rejected[0].error, "field `ts`: given more than once");
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let b = one(r#"{"id":"\u4e2d1","type":"conversation.close","ts":1,"shop":"店","conversation":"c\n"}"#);
        assert_eq!(b.events[0].1.id.as_str(), "中1");
        assert_eq!(b.events[0].1.shop.as_str(), "店");
    }
}
