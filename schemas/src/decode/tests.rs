use std::borrow::Cow;

use proptest::prelude::*;

use super::*;
use crate::event::FieldDef;

fn schema() -> EventSchema {
    let field = |name: &str, ty| FieldDef {
        name: name.to_owned(),
        ty,
    };
    EventSchema {
        time_field: "ts".to_owned(),
        fields: vec![
            field("user_id", FieldType::String),
            field("clicks", FieldType::Int64),
            field("latency_ms", FieldType::Float64),
            field("mobile", FieldType::Bool),
            field("signup", FieldType::Timestamp),
        ],
    }
}

fn decode(json: &str) -> Result<Event<'_>, DecodeError> {
    Decoder::new(schema()).decode(json.as_bytes())
}

#[test]
fn a_full_event_decodes_to_typed_values() {
    let event = decode(
        r#"{"ts":"2026-11-21T10:00:00.123Z","user_id":"u1","clicks":3,"latency_ms":12.5,
            "mobile":true,"signup":1700000000000,"ignored":{"nested":[1,2]}}"#,
    )
    .unwrap();
    assert_eq!(event.time_ms, 1_795_255_200_123);
    assert_eq!(
        event.values,
        vec![
            Value::Str(Cow::Borrowed("u1")),
            Value::Int(3),
            Value::Float(12.5),
            Value::Bool(true),
            Value::Timestamp(1_700_000_000_000),
        ]
    );
    assert!(
        matches!(event.values[0], Value::Str(Cow::Borrowed(_))),
        "unescaped strings are borrowed"
    );
}

#[test]
fn absent_and_null_fields_are_null_and_numbers_widen_where_lossless() {
    let event =
        decode(r#"{"ts":1000,"clicks":null,"latency_ms":7,"signup":"2026-01-01T00:00:00+01:00"}"#)
            .unwrap();
    assert_eq!(event.time_ms, 1000);
    assert_eq!(event.values[0], Value::Null);
    assert_eq!(event.values[1], Value::Null);
    assert_eq!(event.values[2], Value::Float(7.0));
    assert_eq!(event.values[4], Value::Timestamp(1_767_222_000_000));
    assert_eq!(
        decode(r#"{"ts":2.0e3,"clicks":4.0}"#).unwrap().values[1],
        Value::Int(4)
    );
}

#[test]
fn escaped_strings_are_unescaped() {
    let event = decode(r#"{"ts":0,"user_id":"a\"b\u00e9"}"#).unwrap();
    assert_eq!(event.values[0], Value::Str(Cow::Owned("a\"bé".to_owned())));
}

#[test]
fn every_malformed_input_gets_a_precise_error() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "event is empty"),
        (b"  \n", "event is empty"),
        (
            b"{\"ts\":1,\"user_id\":\"\xff\"}",
            "event is not valid UTF-8 (first invalid byte at offset 19)",
        ),
        (
            b"{\"ts\":1,",
            "event is not valid JSON: EOF while parsing a value at line 1 column 8",
        ),
        (
            b"{\"ts\":1} trailing",
            "event is not valid JSON: trailing characters at line 1 column 10",
        ),
        (b"[1,2]", "event must be a JSON object, found an array"),
        (b"\"text\"", "event must be a JSON object, found a string"),
        (
            b"{\"user_id\":\"u\"}",
            "event has no time field 'ts' (missing or null)",
        ),
        (
            b"{\"ts\":null}",
            "event has no time field 'ts' (missing or null)",
        ),
        (
            b"{\"ts\":1,\"clicks\":\"3\"}",
            "field 'clicks' must be an integer (int64), found the string \"3\"",
        ),
        (
            b"{\"ts\":1,\"clicks\":3.5}",
            "field 'clicks' must be an integer (int64), found the number 3.5",
        ),
        (
            b"{\"ts\":1,\"clicks\":18446744073709551615}",
            "field 'clicks' must be an integer (int64), found 18446744073709551615, which is larger than int64",
        ),
        (
            b"{\"ts\":1,\"user_id\":42}",
            "field 'user_id' must be a string, found the number 42",
        ),
        (
            b"{\"ts\":1,\"mobile\":\"yes\"}",
            "field 'mobile' must be true or false, found the string \"yes\"",
        ),
        (
            b"{\"ts\":1,\"latency_ms\":[1]}",
            "field 'latency_ms' must be a number (float64), found an array",
        ),
        (
            b"{\"ts\":1,\"user_id\":{}}",
            "field 'user_id' must be a string, found an object",
        ),
        (
            b"{\"ts\":\"yesterday\"}",
            "field 'ts': cannot read \"yesterday\" as an RFC 3339 timestamp such as 2026-11-21T10:00:00Z (premature end of input)",
        ),
        (
            b"{\"ts\":true}",
            "field 'ts' must be an RFC 3339 string or integer epoch milliseconds, found true",
        ),
        (
            b"{\"ts\":253402300800000}",
            "field 'ts': 253402300800000 is outside the supported time range (years 0001 to 9999)",
        ),
        (
            b"{\"ts\":1,\"clicks\":1,\"clicks\":2}",
            "field 'clicks' appears more than once",
        ),
        (b"{\"ts\":1,\"ts\":2}", "field 'ts' appears more than once"),
    ];
    let decoder = Decoder::new(schema());
    for (input, expected) in cases {
        let error = decoder.decode(input).expect_err(expected);
        assert_eq!(
            error.to_string(),
            *expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn error_codes_are_stable_names() {
    assert_eq!(decode("{}").unwrap_err().code(), "missing_time");
    assert_eq!(decode("nope").unwrap_err().code(), "not_json");
    assert_eq!(
        decode(r#"{"ts":1,"clicks":"x"}"#).unwrap_err().code(),
        "wrong_type"
    );
}

#[test]
fn many_fields_still_detect_duplicates() {
    let fields = (0..200)
        .map(|i| FieldDef {
            name: format!("f{i}"),
            ty: FieldType::Int64,
        })
        .collect();
    let decoder = Decoder::new(EventSchema {
        time_field: "ts".to_owned(),
        fields,
    });
    assert_eq!(
        decoder.decode(br#"{"ts":1,"f150":1}"#).unwrap().values[150],
        Value::Int(1)
    );
    assert_eq!(
        decoder
            .decode(br#"{"ts":1,"f199":1,"f199":2}"#)
            .unwrap_err(),
        DecodeError::DuplicateField {
            field: "f199".to_owned()
        }
    );
}

/// A JSON value of any shape, to throw at every field.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|v| v.into()),
        any::<u64>().prop_map(|v| v.into()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |v| v.is_finite())
            .prop_map(|v| v.into()),
        ".{0,12}".prop_map(serde_json::Value::String),
        Just(serde_json::Value::String("2026-11-21T10:00:00Z".into())),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                "ts|user_id|clicks|latency_ms|mobile|signup|other",
                inner,
                0..7
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Decoder::new(schema()).decode(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics_and_errors_name_a_reason(json in any_json()) {
        let text = json.to_string();
        if let Err(error) = Decoder::new(schema()).decode(text.as_bytes()) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn well_typed_events_round_trip(
        ts in MIN_TIME_MS..=MAX_TIME_MS,
        user in proptest::option::of(".{0,20}"),
        clicks in proptest::option::of(any::<i64>()),
        latency in proptest::option::of(-1e300f64..1e300),
        mobile in proptest::option::of(any::<bool>()),
    ) {
        let json = serde_json::json!({
            "ts": ts, "user_id": user, "clicks": clicks, "latency_ms": latency, "mobile": mobile,
        });
        let text = json.to_string();
        let event = Decoder::new(schema()).decode(text.as_bytes()).unwrap();
        prop_assert_eq!(event.time_ms, ts);
        prop_assert_eq!(&event.values[0], &user.map_or(Value::Null, |u| Value::Str(Cow::Owned(u))));
        prop_assert_eq!(&event.values[1], &clicks.map_or(Value::Null, Value::Int));
        prop_assert_eq!(&event.values[2], &latency.map_or(Value::Null, Value::Float));
        prop_assert_eq!(&event.values[3], &mobile.map_or(Value::Null, Value::Bool));
    }
}

/// One JSON token of the kinds the fast path reads, skips or must give up on.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 /:_é€-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        1 => Just("\"a\\\"b\\u00e9\"".to_owned()),
        1 => Just("\"tab\there\"".to_owned()),
        2 => Just("\"2026-11-21T10:00:00.250+01:00\"".to_owned()),
        1 => Just("\"2026-13-01T00:00:00Z\"".to_owned()),
        4 => "-?[0-9]{1,21}(\\.[0-9]{1,19})?([eE][+-]?[0-9]{1,3})?",
        2 => any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v:?}")),
        2 => any::<i64>().prop_map(|v| v.to_string()),
        1 => any::<u64>().prop_map(|v| v.to_string()),
        1 => prop_oneof![
            Just("-0"), Just("-0.0"), Just("0.0"), Just("01"), Just("1."), Just(".5"), Just("-"),
            Just("1e5"), Just("3.0"), Just("9223372036854775808"), Just("-9223372036854775808"),
        ]
        .prop_map(str::to_owned),
        3 => prop_oneof![
            Just("true"), Just("false"), Just("null"), Just("tru"), Just("nul"), Just("{}"),
            Just("[1,2]"), Just("{\"a\":1}"),
        ]
        .prop_map(str::to_owned),
        4 => (1_700_000_000_000i64..1_800_000_000_000).prop_map(|v| v.to_string()),
    ]
}

/// A value of `key`'s type in any of its JSON spellings (and its edge cases), or any token.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    let number = prop_oneof![
        "-?[0-9]{1,21}(\\.[0-9]{1,19})?",
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| format!("{v:?}")),
        any::<i64>().prop_map(|v| v.to_string()),
        prop_oneof![
            Just("-0"),
            Just("-0.0"),
            Just("0"),
            Just("3.0"),
            Just("-7.000"),
            Just("9223372036854775807"),
            Just("9223372036854775808"),
            Just("-9223372036854775808"),
            Just("123456789012345678"),
            Just("1234567890123456789"),
        ]
        .prop_map(str::to_owned),
        Just(format!("{}.5", "9".repeat(310))),
    ];
    let typed = match key {
        "ts" | "signup" => prop_oneof![
            (-62_135_596_800_000i64..253_402_300_799_999).prop_map(|v| v.to_string()),
            (1_700_000_000_000i64..1_800_000_000_000).prop_map(|v| format!("{v}.0")),
            Just("\"2026-11-21T10:00:00.250+01:00\"".to_owned()),
            Just("253402300800000".to_owned()),
        ]
        .boxed(),
        "clicks" | "latency_ms" => number.boxed(),
        "mobile" => prop_oneof![Just("true".to_owned()), Just("false".to_owned())].boxed(),
        _ => "[a-zA-Z0-9 /:_é€-]{0,12}"
            .prop_map(|s| format!("\"{s}\""))
            .boxed(),
    };
    prop_oneof![12 => typed, 1 => Just("null".to_owned()), 1 => token()].boxed()
}

/// Objects of the schema's keys (and strangers, and repeats) with values mostly of the right type,
/// mostly well formed, sometimes with a separator missing or junk around.
fn near_events() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        1 => Just("ts"), 2 => Just("user_id"), 2 => Just("clicks"), 2 => Just("latency_ms"),
        1 => Just("mobile"), 1 => Just("signup"), 1 => Just("other"), 1 => Just("u\\u0073er_id"),
    ];
    let space = prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\n\t "), 1 => Just("\r\n")];
    let member = (
        key.prop_flat_map(|k| (Just(k), value_for(k))),
        space.clone(),
        space.clone(),
    )
        .prop_map(|((k, v), a, b)| format!("\"{k}\"{a}:{b}{v}"));
    let separator = prop_oneof![30 => Just(","), 1 => Just(""), 1 => Just(",,"), 1 => Just(";")];
    let ending = prop_oneof![30 => Just(""), 1 => Just(" "), 1 => Just("x"), 1 => Just("}")];
    (
        Just("\"ts\":1795000000000"),
        proptest::collection::vec((member, separator), 0..6),
        space,
        ending,
    )
        .prop_map(|(first, members, space, ending)| {
            let mut text = format!("{space}{{");
            // A valid time first unless a member sets one, so that most objects can be events.
            if !members.iter().any(|(m, _)| m.starts_with("\"ts\"")) {
                text.push_str(first);
                text.push(',');
            }
            for (i, (member, separator)) in members.iter().enumerate() {
                if i > 0 {
                    text.push_str(separator);
                }
                text.push_str(member);
            }
            if text.ends_with(',') {
                text.pop();
            }
            text.push('}');
            text.push_str(ending);
            text
        })
}

/// Events compared through `Debug`, so floats compare bit for bit (`-0.0` is not `0.0`).
fn same(a: &Event<'_>, b: &Event<'_>) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// The fast path's event, decoded after a value already in the buffer (as in a poll's shared buffer),
/// which must stay as it was whether the fast path answers or not.
fn fast_event<'a>(decoder: &Decoder, text: &'a str) -> Option<Event<'a>> {
    let mut values = vec![Value::Int(7)];
    let time_ms = fast::decode(decoder, text, &mut values);
    assert_eq!(values[0], Value::Int(7), "{text}");
    let fields = values.split_off(1);
    match time_ms {
        Some(time_ms) => Some(Event {
            time_ms,
            values: fields,
        }),
        None => {
            assert!(fields.is_empty(), "{text}");
            None
        }
    }
}

/// Whenever the fast path answers, serde's path gives the same event; when the fast path gives up,
/// `decode` is exactly serde's answer (error included). The fast path must answer a good share of
/// the cases, or the comparison would prove little.
#[test]
fn the_fast_path_answers_only_what_serde_answers() {
    let decoder = Decoder::new(schema());
    let answered = std::cell::Cell::new(0);
    let cases = 4096;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    runner
        .run(&near_events(), |text| {
            let slow = decoder.decode_with_serde(&text);
            match fast_event(&decoder, &text) {
                Some(event) => {
                    answered.set(answered.get() + 1);
                    let slow = slow
                        .map_err(|e| TestCaseError::fail(format!("fast {event:?}, serde {e}")))?;
                    prop_assert!(same(&event, &slow), "fast {:?} vs serde {:?}", event, slow);
                }
                None => {
                    let decoded = decoder.decode(text.as_bytes());
                    prop_assert_eq!(format!("{decoded:?}"), format!("{slow:?}"));
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(
        answered.get() > cases / 4,
        "fast path answered {} of {cases}",
        answered.get()
    );
}

#[test]
fn events_of_the_usual_shape_take_the_fast_path() {
    let decoder = Decoder::new(schema());
    for text in [
        r#"{"ts":1795000000000,"user_id":"u1","clicks":-3,"latency_ms":12.5,"mobile":true}"#,
        r#" { "ts" : "2026-11-21T10:00:00Z" , "signup": 1700000000000, "other": [1], "clicks": 3.0 } "#,
        r#"{"other":"x","more":null,"n":-0.5,"flag":false,"ts":1795000000000,"latency_ms":7}"#,
        "{\n\t\"ts\": 1795000000000,\r\n\"user_id\": \"ünïcode €\", \"latency_ms\": null\n}",
    ] {
        // The second has a nested value for an unconfigured key: serde's path takes it.
        let fast = fast_event(&decoder, text);
        let serde = decoder.decode_with_serde(text).unwrap();
        if text.contains('[') {
            assert!(fast.is_none(), "{text}");
        } else {
            assert!(same(&fast.expect(text), &serde), "{text}");
        }
    }
}

/// A poll's events share one value buffer: each event's values follow the previous event's, a
/// rejected event leaves nothing behind, and each reads as serde's path reads it alone. A field
/// name longer than the fast lookup's 16 bytes takes the map, and a key differing from it in its
/// last byte is not it.
#[test]
fn events_decoded_into_one_buffer_read_as_each_alone() {
    let long = "a_field_name_longer_than_sixteen";
    let mut schema = schema();
    schema.fields.push(FieldDef {
        name: long.to_owned(),
        ty: FieldType::String,
    });
    let width = schema.fields.len();
    let decoder = Decoder::new(schema);
    let texts = [
        format!(r#"{{"ts":1795000000000,"user_id":"u1","{long}":"long"}}"#),
        r#"{"ts":1795000000000,"clicks":"three"}"#.to_owned(),
        r#"{"ts":"2026-11-21T10:00:00Z","user_id":"esc\"aped","mobile":false}"#.to_owned(),
        "not json".to_owned(),
        format!(r#"{{"{long}":"x","a_field_name_longer_than_sixteeN":"y","ts":5}}"#),
    ];
    let mut values = Vec::new();
    let mut decoded = 0;
    for text in &texts {
        let before = values.len();
        match (
            decoder.decode_into(text.as_bytes(), &mut values),
            decoder.decode_with_serde(text),
        ) {
            (Ok(time_ms), Ok(alone)) => {
                assert_eq!(time_ms, alone.time_ms, "{text}");
                assert_eq!(values[before..], alone.values[..], "{text}");
                decoded += 1;
            }
            (Err(error), Err(alone)) => {
                assert_eq!(error, alone, "{text}");
                assert_eq!(values.len(), before, "{text}");
            }
            (fast, slow) => panic!("{text}: {fast:?} vs serde {slow:?}"),
        }
    }
    assert_eq!(decoded, 3);
    assert_eq!(values.len(), 3 * width);
    assert_eq!(values[width - 1], Value::Str(Cow::Borrowed("long")));
    assert_eq!(values[3 * width - 1], Value::Str(Cow::Borrowed("x")));
}

/// The fast path predicts each key from the order of the events before it. Events that keep to an
/// order, switch to another, or put a near miss of a name (a byte changed, one more or one less, an
/// escape, an unknown key) where the name is predicted all read as serde's path reads them.
#[test]
fn keys_in_a_learned_order_read_as_serde_reads_them() {
    let members = [
        ("ts", "1795000000000"),
        ("user_id", "\"u1\""),
        ("clicks", "3"),
        ("latency_ms", "12.5"),
        ("mobile", "true"),
        ("signup", "\"2026-11-21T10:00:00Z\""),
    ];
    let order =
        proptest::sample::subsequence((0..members.len()).collect::<Vec<_>>(), 1..=6).prop_shuffle();
    let variant = prop_oneof![
        24 => Just(None),
        1 => Just(Some("x")),
        1 => Just(Some("chop")),
        1 => Just(Some("swap")),
        1 => Just(Some("escape")),
        1 => Just(Some("stranger")),
    ];
    let events = (
        proptest::collection::vec(order, 1..=3),
        proptest::collection::vec((0..3usize, proptest::collection::vec(variant, 6)), 1..40),
    );
    let decoder = Decoder::new(schema());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    runner
        .run(&events, |(orders, events)| {
            for (which, variants) in events {
                let order = &orders[which % orders.len()];
                let text = order.iter().zip(&variants).map(|(&i, variant)| {
                    let (name, value) = members[i];
                    let key = match variant {
                        None => name.to_owned(),
                        Some("x") => format!("{name}x"),
                        Some("chop") => name[..name.len() - 1].to_owned(),
                        Some("swap") => format!("{}{}", &name[..name.len() - 1], "q"),
                        Some("escape") => format!("\\u{:04x}{}", name.as_bytes()[0], &name[1..]),
                        Some(_) => "other".to_owned(),
                    };
                    format!("\"{key}\":{value}")
                });
                let text = format!("{{{}}}", text.collect::<Vec<_>>().join(","));
                let serde = decoder.decode_with_serde(&text);
                let fast = fast_event(&decoder, &text);
                match (&fast, &serde) {
                    (Some(fast), Ok(serde)) => {
                        prop_assert!(same(fast, serde), "{}: {:?} vs {:?}", text, fast, serde);
                    }
                    (None, _) => {
                        let escaped = text.contains('\\');
                        prop_assert!(escaped || serde.is_err(), "fast path gave up on {}", text);
                    }
                    (Some(fast), Err(error)) => {
                        return Err(TestCaseError::fail(format!("{text}: {fast:?} vs {error}")));
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}
