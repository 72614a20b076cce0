//! The admin socket: byte streams through `admin::read_line` (the framing: newline-delimited,
//! 64 KiB per line, the rest of a long line dropped), each line through
//! `protocol::parse_request`, and the round trips the client and the daemon rely on: a command
//! the client encodes parses back to itself, every response line decodes back.
//!
//! Errors here go back to the peer that sent the line (already allowed on the socket) and are
//! not logged, so echoing a field name or value from the request is allowed; what is checked
//! is that the error answer is one well-formed line.

use appdata_syncd::admin::protocol::{parse_request, Command, ErrorCode, Response, MAX_LINE};
use appdata_syncd::admin::{read_line, Line};
use appdata_syncd::store::users::UserState;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

use crate::mutate::{self, Bytes};

#[derive(Debug, Clone)]
enum Case {
    /// One request line, as `handle_connection` gets it.
    Line(Bytes),
    /// Several lines (some near or over the limit), read in chunks of `chunk` bytes.
    Stream { parts: Vec<Part>, chunk: usize },
    /// A command and id encoded as the client does.
    Command(Command, Value),
    /// A response, encoded by the daemon and decoded by the client.
    Response(ResponseCase),
}

#[derive(Debug, Clone)]
enum Part {
    Bytes(Bytes),
    /// A run of `n` bytes `b`: lines of exactly, just under and just over [`MAX_LINE`].
    Run(usize, u8),
}

#[derive(Debug, Clone)]
enum ResponseCase {
    Ok(Option<Value>, Value),
    Error(Option<Value>, ErrorCode, String),
    Event(Option<Value>, Value),
}

fn seeds() -> Vec<Vec<u8>> {
    [
        r#"{"id": 1, "cmd": "status"}"#,
        r#"{"id": "x", "cmd": "users", "state": "active"}"#,
        r#"{"id": 2, "cmd": "user", "sub": "1234567890"}"#,
        r#"{"id": 3, "cmd": "resync", "sub": "42", "full": true, "wait": true}"#,
        r#"{"id": 4, "cmd": "resync", "all": true}"#,
        r#"{"id": 5, "cmd": "push", "sub": "42", "path": "docs/a.json", "content_length": 2, "mime_type": "application/json", "if_match": "*", "sync_now": true}"#,
        r#"{"id": [1, {"a": null}], "cmd": "log-level", "filter": "appdata_syncd=debug,info"}"#,
        r#"{"cmd": "forget", "sub": "42"}"#,
        r#"{"cmd": "reload", "id": null}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// JSON values without floats: floats need not survive an encode/decode round trip exactly.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            vec((".{0,8}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn command() -> impl Strategy<Value = Command> {
    let s = || ".{0,40}";
    prop_oneof![
        Just(Command::Status),
        (
            option::of(proptest::sample::select(UserState::ALL)),
            option::of(s()),
            option::of(any::<u32>()),
        )
            .prop_map(|(state, after, limit)| Command::Users {
                state,
                after,
                limit
            }),
        s().prop_map(|sub| Command::User { sub }),
        s().prop_map(|sub| Command::Files { sub }),
        (option::of(s()), any::<[bool; 3]>()).prop_map(|(sub, [all, full, wait])| {
            Command::Resync {
                sub,
                all,
                full,
                wait,
            }
        }),
        s().prop_map(|sub| Command::Pause { sub }),
        s().prop_map(|sub| Command::Resume { sub }),
        (
            (s(), s(), any::<u64>(), option::of(s())),
            (option::of(s()), option::of(s()), any::<bool>())
        )
            .prop_map(
                |((sub, path, content_length, mime_type), (if_match, if_none_match, sync_now))| {
                    Command::Push {
                        sub,
                        path,
                        content_length,
                        mime_type,
                        if_match,
                        if_none_match,
                        sync_now,
                    }
                }
            ),
        s().prop_map(|sub| Command::Forget { sub }),
        s().prop_map(|filter| Command::LogLevel { filter }),
        Just(Command::Reload),
        (s(), any::<bool>()).prop_map(|(name, write)| Command::ApiKeyCreate { name, write }),
        Just(Command::ApiKeyList),
        s().prop_map(|name| Command::ApiKeyRevoke { name }),
        Just(Command::Webhooks),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(vec![
        ErrorCode::BadRequest,
        ErrorCode::LineTooLong,
        ErrorCode::Forbidden,
        ErrorCode::UnknownUser,
        ErrorCode::InvalidState,
        ErrorCode::InvalidFilter,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ])
}

fn response() -> impl Strategy<Value = ResponseCase> {
    let id = || option::of(json_value());
    prop_oneof![
        (id(), json_value()).prop_map(|(id, v)| ResponseCase::Ok(id, v)),
        (id(), error_code(), ".{0,60}").prop_map(|(id, c, m)| ResponseCase::Error(id, c, m)),
        (id(), json_value()).prop_map(|(id, v)| ResponseCase::Event(id, v)),
    ]
}

fn part() -> impl Strategy<Value = Part> {
    let sizes = select(vec![
        0,
        1,
        MAX_LINE - 1,
        MAX_LINE,
        MAX_LINE + 1,
        2 * MAX_LINE + 3,
    ]);
    prop_oneof![
        6 => mutate::input(seeds(), &[b"\n", b"\n\n", b"\r\n"]).prop_map(Part::Bytes),
        1 => (sizes, select(vec![b'a', b'\n', b' ', 0xff])).prop_map(|(n, b)| Part::Run(n, b)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let line = mutate::input(seeds(), &[br#""cmd":"#, br#""id":"#, br#""sub":"#]);
    let chunk = select(vec![1usize, 2, 7, 64, 4096, 65536, 1 << 20]);
    prop_oneof![
        6 => line.prop_map(Case::Line),
        1 => (vec(part(), 1..6), chunk).prop_map(|(parts, chunk)| Case::Stream { parts, chunk }),
        2 => (command(), json_value()).prop_map(|(c, id)| Case::Command(c, id)),
        1 => response().prop_map(Case::Response),
    ]
}

/// What the framing must yield for `stream`: each newline-terminated line as text, or
/// `TooLong` past [`MAX_LINE`] bytes; an unterminated tail is not a request.
fn expected_lines(stream: &[u8]) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut rest = stream;
    while let Some(i) = rest.iter().position(|b| *b == b'\n') {
        let line = &rest[..i];
        lines.push(if line.len() > MAX_LINE {
            Line::TooLong
        } else {
            Line::Text(String::from_utf8_lossy(line).into_owned())
        });
        rest = &rest[i + 1..];
    }
    lines.push(Line::Closed);
    lines
}

fn read_all(rt: &tokio::runtime::Runtime, stream: &[u8], chunk: usize) -> Vec<Line> {
    rt.block_on(async {
        let mut reader = tokio::io::BufReader::with_capacity(chunk, stream);
        let mut lines = Vec::new();
        loop {
            let line = read_line(&mut reader).await.expect("reading a byte slice");
            let closed = line == Line::Closed;
            lines.push(line);
            if closed {
                return lines;
            }
        }
    })
}

/// The daemon's handling of one line: skip blank lines, answer a bad one with `bad_request`.
fn check_line(line: &str) -> Result<(), TestCaseError> {
    if line.trim().is_empty() {
        return Ok(());
    }
    let (id, command) = parse_request(line);
    match command {
        Ok(command) => {
            // What the daemon understood, the client can say: encode it and parse it again.
            check_command(command, id.unwrap_or(Value::Null))?;
        }
        Err(message) => {
            let response = Response::error(id.clone(), ErrorCode::BadRequest, message.clone());
            let line = response.to_line();
            prop_assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            let back: Response = serde_json::from_str(&line)
                .map_err(|e| TestCaseError::fail(format!("error line does not decode: {e}")))?;
            prop_assert_eq!(back.ok, Some(false));
            let error = back.error.expect("an error body");
            prop_assert_eq!(error.code, ErrorCode::BadRequest);
            prop_assert_eq!(error.message, message);
            // An `"id": null` comes back as no id: the same to a client.
            let id = id.filter(|v| !v.is_null());
            if !id.as_ref().is_some_and(has_float) {
                prop_assert_eq!(back.id, id);
            }
        }
    }
    Ok(())
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

/// The client's encoding (`AdminClient::request`) parses back to the same id and command.
fn check_command(command: Command, id: Value) -> Result<(), TestCaseError> {
    let mut value = serde_json::to_value(&command).expect("a command serialises");
    if let Value::Object(map) = &mut value {
        map.insert("id".into(), id.clone());
    }
    let line = value.to_string();
    prop_assert!(!line.contains('\n'), "an encoded request spans lines");
    let (got_id, got) = parse_request(&line);
    let got = got.map_err(|e| TestCaseError::fail(format!("{line}: {e}")))?;
    prop_assert_eq!(got, command);
    if !has_float(&id) {
        prop_assert_eq!(got_id, Some(id));
    }
    Ok(())
}

fn check_response(case: ResponseCase) -> Result<(), TestCaseError> {
    let response = match case {
        ResponseCase::Ok(id, v) => Response::ok(id, v),
        ResponseCase::Error(id, code, m) => Response::error(id, code, m),
        ResponseCase::Event(id, v) => Response::event(id, v),
    };
    let line = response.to_line();
    prop_assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    let back: Response = serde_json::from_str(&line)
        .map_err(|e| TestCaseError::fail(format!("response line does not decode: {e}")))?;
    prop_assert_eq!(back.is_final(), response.is_final());
    // A null field reads back as absent: the same to a client.
    let fields = |r: &Response| match serde_json::to_value(r).expect("serialises") {
        Value::Object(map) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => serde_json::Map::new(),
    };
    prop_assert_eq!(fields(&back), fields(&response));
    Ok(())
}

pub fn run() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let check = |case: Case| -> Result<(), TestCaseError> {
        match case {
            Case::Line(bytes) => {
                let mut stream = bytes.0;
                stream.push(b'\n');
                for line in read_all(&rt, &stream, 8192) {
                    if let Line::Text(text) = line {
                        check_line(&text)?;
                    }
                }
                Ok(())
            }
            Case::Stream { parts, chunk } => {
                let mut stream = Vec::new();
                for p in &parts {
                    match p {
                        Part::Bytes(b) => stream.extend_from_slice(&b.0),
                        Part::Run(n, b) => stream.extend(std::iter::repeat_n(*b, *n)),
                    }
                }
                let got = read_all(&rt, &stream, chunk);
                prop_assert_eq!(got, expected_lines(&stream));
                Ok(())
            }
            Case::Command(command, id) => check_command(command, id),
            Case::Response(r) => check_response(r),
        }
    };
    let fixed = seeds()
        .into_iter()
        .map(|s| Case::Line(Bytes(s)))
        .chain([Case::Stream {
            parts: vec![
                Part::Run(MAX_LINE, b'a'),
                Part::Bytes(Bytes(b"\n".to_vec())),
                Part::Run(MAX_LINE + 1, b'b'),
                Part::Bytes(Bytes(b"\n{}\n".to_vec())),
            ],
            chunk: 4096,
        }])
        .collect();
    crate::fuzz("admin_protocol", fixed, case(), check);
}
