//! Independent check of one JSON event against PROTOCOL §2 (field names,
//! types, sizes, enums). Used by tests and by `generate --validate`.

use serde_json::Value;

fn str_field(v: &Value, name: &str, max: usize, required: bool) -> Result<(), String> {
    match v.get(name) {
        None | Some(Value::Null) if !required => Ok(()),
        None | Some(Value::Null) => Err(format!("missing field `{name}`")),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(()),
        Some(other) => Err(format!("field `{name}`: want a string of 1..={max} bytes, got {other}")),
    }
}

/// `Ok` when `v` is a well-formed event with exactly the fields its type defines.
pub fn check_event(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    str_field(v, "id", 128, true)?;
    str_field(v, "shop", 64, true)?;
    match v.get("ts") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|t| (0..=253_402_300_799_999).contains(&t)) => {}
        other => return Err(format!("field `ts`: want integer ms, got {other:?}")),
    }
    let ty = v.get("type").and_then(Value::as_str).ok_or("missing field `type`")?;
    let (required, optional): (&[&str], &[&str]) = match ty {
        "chat.customer" => (&["conversation", "customer"], &["agent"]),
        "chat.agent" => (&["conversation", "customer", "agent"], &["auto"]),
        "conversation.assign" => (&["conversation", "customer", "agent"], &["from_agent"]),
        "conversation.close" => (&["conversation"], &[]),
        "agent.status" => (&["agent", "status"], &[]),
        "customer.flag" => (&["customer", "reason"], &[]),
        "order.paid" => (&["order", "customer", "amount"], &[]),
        other => return Err(format!("unknown type {other:?}")),
    };
    for key in obj.keys() {
        let k = key.as_str();
        if !["id", "type", "ts", "shop"].contains(&k) && !required.contains(&k) && !optional.contains(&k) {
            return Err(format!("field `{k}` is not defined for {ty}"));
        }
    }
    for &f in required.iter().chain(optional) {
        let req = required.contains(&f);
        match f {
            "auto" => {
                if !matches!(v.get("auto"), None | Some(Value::Bool(_))) {
                    return Err("field `auto`: want a bool".into());
                }
            }
            "amount" => {
                if v.get("amount").is_none_or(|a| a.as_u64().is_none()) {
                    return Err("field `amount`: want an integer >= 0 (fen)".into());
                }
            }
            "status" => {
                let s = v.get("status").and_then(Value::as_str).unwrap_or("");
                if !["online", "busy", "away", "offline"].contains(&s) {
                    return Err(format!("field `status`: bad value {s:?}"));
                }
            }
            "reason" => {
                let s = v.get("reason").and_then(Value::as_str).unwrap_or("");
                if !["spam", "ad"].contains(&s) {
                    return Err(format!("field `reason`: bad value {s:?}"));
                }
            }
            _ => str_field(v, f, 128, req)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_good_and_rejects_bad_events() {
        let ok = json!({"id":"e1","type":"chat.agent","ts":1,"shop":"s","conversation":"v","customer":"c","agent":"a","auto":true});
        assert!(check_event(&ok).is_ok());
        let missing = json!({"id":"e1","type":"chat.agent","ts":1,"shop":"s","conversation":"v","customer":"c"});
        assert!(check_event(&missing).is_err());
        let typo = json!({"id":"e1","type":"chat.agent","ts":1,"shop":"s","conversation":"v","customer":"c","agent":"a","atuo":true});
        assert!(check_event(&typo).is_err());
        let neg = json!({"id":"e1","type":"order.paid","ts":1,"shop":"s","order":"o","customer":"c","amount":-1});
        assert!(check_event(&neg).is_err());
        let ts = json!({"id":"e1","type":"conversation.close","ts":"1","shop":"s","conversation":"v"});
        assert!(check_event(&ts).is_err());
    }
}
