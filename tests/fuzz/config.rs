//! Configuration: config.toml text and `APPDATA_SYNCD_*` environment overrides through
//! `Config::load_with_env`, then `Config::resolve` (every check start-up runs) with the fuzzed
//! client_secret.json and encryption key files; `[sync] mirror_url` values through
//! `MirrorLocation::parse`, whose s3:// answers must print and parse back to themselves.
//!
//! config.toml holds no secrets, so its errors may quote it; an error must never quote the
//! client secret or key material from the credential files.

use std::path::Path;

use appdata_syncd::config::{Config, MirrorLocation};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

use crate::mutate::{self, Bytes};

#[derive(Debug, Clone)]
struct Case {
    toml: Bytes,
    env: Vec<(String, String)>,
    client_secret: Bytes,
    key: Bytes,
    previous_key: Option<Bytes>,
    mirror_url: String,
}

const SECTIONS: &[(&str, &[&str])] = &[
    (
        "google",
        &[
            "client_secret_file",
            "token_uri",
            "auth_uri",
            "jwks_uri",
            "revoke_uri",
            "drive_api_base",
            "android_client_ids",
            "redirect_uri",
            "required_scopes",
            "request_timeout",
        ],
    ),
    ("intake", &["listen", "tls_cert", "tls_key"]),
    (
        "store",
        &[
            "state_dir",
            "url",
            "url_file",
            "allow_unverified_tls",
            "encryption_key_file",
            "previous_key_files",
            "max_connections",
        ],
    ),
    (
        "sync",
        &[
            "data_dir",
            "mirror_url",
            "schedule",
            "concurrency",
            "max_requests_per_second",
            "shutdown_grace",
            "instance_id",
            "lease",
        ],
    ),
    ("admin", &["socket", "group", "allow"]),
    ("metrics", &["listen"]),
    ("log", &["level", "format"]),
];

/// A TOML value as text: of the right type or not, odd durations, crons, addresses, filters.
fn toml_value() -> impl Strategy<Value = String> {
    let string = prop_oneof![
        select(vec![
            "10s",
            "0s",
            "1h 30m",
            "18446744073709551615s",
            "99999999999y",
            "1ns",
            "-5s",
            "5",
            "0 */15 * * * *",
            "* * * * * *",
            "0 0 0 30 2 *",
            "0 0 0 31 2 * 2030",
            "*/0 * * * * *",
            "60 * * * * *",
            "1-0 * * * * *",
            "@hourly",
            "0 0 0 ? * L",
            "127.0.0.1:8080",
            "[::1]:0",
            "0.0.0.0:99999",
            "localhost:80",
            "info",
            "appdata_syncd=trace,info",
            "[span{field=/.*/}]=debug",
            "a[b{c}]=x",
            "json",
            "human",
            "auto",
            "http://127.0.0.1:1/x",
            "https://",
            "ftp://x",
            "",
            "sqlite://:memory:",
            "postgres://u:p@h/db",
            "postgres://u@db.example.com/db?sslmode=verify-full&password=p",
            "http://www.googleapis.com",
            "s3://my-bucket/p",
            "file:///tmp/x",
            "/tmp/appdata-syncd-fuzz",
            "a, b,,c",
        ])
        .prop_map(String::from),
        "[ -~]{0,30}",
    ]
    .prop_map(|s| toml::Value::String(s).to_string());
    prop_oneof![
        6 => string,
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => select(vec!["true", "18446744073709551616", "1e400", "nan", "-inf", "0.5",
            "1979-05-27T07:32:00Z", "[]", "[\"a\", 1]", "{ a = 1 }", "[[[[[[[[1]]]]]]]]"])
            .prop_map(String::from),
    ]
}

fn key_name() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        8 => select(SECTIONS.to_vec()).prop_flat_map(|(section, keys)| {
            select(keys.to_vec()).prop_map(move |k| (section.to_string(), k.to_string()))
        }),
        1 => ("[a-z_]{1,10}", "[a-z_]{1,10}"),
    ]
}

/// A config.toml of known and unknown keys with values of every type.
fn structured_toml() -> impl Strategy<Value = Bytes> {
    vec((key_name(), toml_value()), 0..12).prop_map(|entries| {
        let mut text = String::new();
        let mut sections: Vec<&String> = entries.iter().map(|((s, _), _)| s).collect();
        sections.dedup();
        for section in sections {
            text.push_str(&format!("[{section}]\n"));
            for ((s, k), v) in &entries {
                if s == section {
                    text.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        Bytes(text.into_bytes())
    })
}

fn env() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        6 => (key_name(), any::<bool>()).prop_map(|((s, k), upper)| {
            let name = format!("APPDATA_SYNCD_{s}__{k}");
            if upper { name.to_ascii_uppercase() } else { name }
        }),
        1 => select(vec!["APPDATA_SYNCD_CONFIG", "APPDATA_SYNCD_TEST_X", "APPDATA_SYNCD_",
            "APPDATA_SYNCD___", "APPDATA_SYNCD_X", "OTHER"]).prop_map(String::from),
        1 => "APPDATA_SYNCD_[A-Za-z_]{0,12}",
    ];
    let value = prop_oneof![
        toml_value(),
        toml_value().prop_map(|v| v.trim_matches('"').to_string()),
        "[ -~]{0,30}",
    ];
    vec((name, value), 0..4)
}

fn client_secret() -> impl Strategy<Value = Bytes> {
    let structured = (
        select(vec!["web", "installed", "other"]),
        prop_oneof![
            ".{0,20}".prop_map(serde_json::Value::from),
            Just(serde_json::json!(5))
        ],
        prop_oneof![
            mutate::secret().prop_map(serde_json::Value::from),
            Just(serde_json::json!("")),
            Just(serde_json::json!(null)),
            mutate::secret().prop_map(|s| serde_json::json!([s])),
        ],
        option::of(prop_oneof![
            Just(serde_json::json!("http://127.0.0.1:1/token")),
            ".{0,20}".prop_map(serde_json::Value::from),
        ]),
    )
        .prop_map(|(kind, id, secret, token_uri)| {
            let mut details = serde_json::json!({ "client_id": id, "client_secret": secret });
            if let Some(t) = token_uri {
                details["token_uri"] = t;
            }
            Bytes(
                serde_json::json!({ kind: details })
                    .to_string()
                    .into_bytes(),
            )
        });
    let seed = br#"{"web":{"client_id":"1234-web.apps.googleusercontent.com","project_id":"p","auth_uri":"https://accounts.google.com/o/oauth2/auth","token_uri":"https://oauth2.googleapis.com/token","client_secret":"GOCSPX-AbCdEfGhIjKlMnOpQrStUvWxYz01","redirect_uris":["http://localhost"]}}"#;
    prop_oneof![
        2 => structured,
        1 => mutate::input(vec![seed.to_vec()], &[br#""client_secret":"#, br#""web":"#]),
    ]
}

fn key_file() -> impl Strategy<Value = Bytes> {
    let b64 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let hex = "3031323334353637383961626364656630313233343536373839616263646566";
    prop_oneof![
        2 => any::<[u8; 32]>().prop_map(|k| Bytes(k.to_vec())),
        1 => vec(any::<u8>(), 0..80).prop_map(Bytes),
        2 => mutate::input(vec![b64.into(), format!("{hex}\n").into_bytes()], &[]),
    ]
}

fn mirror_url() -> impl Strategy<Value = String> {
    let seeds = vec![
        b"s3://my-bucket/appdata-syncd".to_vec(),
        b"s3://my-bucket".to_vec(),
        b"file:///srv/mirror".to_vec(),
        b"s3://bucket.with.dots/a/b/../c/%2e%2e/d/".to_vec(),
    ];
    prop_oneof![
        2 => mutate::input(seeds, &[b"s3://", b"file://", b"@", b":", b"?", b"#", b"/..", b"%2F"])
            .prop_map(|b| b.lossy()),
        1 => ("[a-z0-9.-]{0,70}", "(/[ -~]{0,8}){0,4}").prop_map(|(b, p)| format!("s3://{b}{p}")),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let seed = include_bytes!("../../config.toml").to_vec();
    let toml = prop_oneof![
        2 => mutate::input(vec![seed], &[b"[google]\n", b"[sync]\n", b"\n[[a]]\n", b"= \"", b"'''", b"\"\"\"", b"\\U0010FFFF", b"\\uD800"]),
        2 => structured_toml(),
    ];
    (
        toml,
        env(),
        client_secret(),
        key_file(),
        option::of(key_file()),
        mirror_url(),
    )
        .prop_map(
            |(toml, env, client_secret, key, previous_key, mirror_url)| Case {
                toml,
                env,
                client_secret,
                key,
                previous_key,
                mirror_url,
            },
        )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("writing a fixture");
    // Secrets as the daemon requires them: readable by their owner only.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod of a fixture");
    path
}

fn check(dir: &Path, case: Case) -> Result<(), TestCaseError> {
    let mut secrets = crate::secrets_in(&case.client_secret.0);
    for key in std::iter::once(&case.key).chain(&case.previous_key) {
        let text = String::from_utf8_lossy(&key.0).trim().to_string();
        if text.len() >= 16 {
            secrets.push(text);
        }
    }
    let config_path = write(dir, "config.toml", &case.toml.0);
    match Config::load_with_env(Some(&config_path), case.env.clone()) {
        Ok(mut config) => {
            // Only files of this case are read: the credentials, whatever the text named.
            config.google.client_secret_file =
                Some(write(dir, "client_secret.json", &case.client_secret.0));
            config.store.encryption_key_file = Some(write(dir, "encryption.key", &case.key.0));
            config.store.previous_key_files = case
                .previous_key
                .iter()
                .map(|k| write(dir, "previous.key", &k.0))
                .collect();
            for p in [&mut config.intake.tls_cert, &mut config.intake.tls_key] {
                if p.is_some() {
                    *p = Some(config_path.clone());
                }
            }
            if let Err(e) = config.resolve() {
                crate::no_secret_in(&format!("{e:#}"), &secrets)?;
                crate::no_secret_in(&format!("{e:?}"), &secrets)?;
            }
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    match MirrorLocation::parse(&case.mirror_url) {
        Ok(location @ MirrorLocation::S3 { .. }) => {
            let printed = location.to_string();
            let again = MirrorLocation::parse(&printed)
                .map_err(|e| TestCaseError::fail(format!("{printed:?} does not parse: {e:#}")))?;
            prop_assert_eq!(again, location);
        }
        Ok(MirrorLocation::Directory(path)) => prop_assert!(path.is_absolute(), "{path:?}"),
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

pub fn run() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fixed = vec![Case {
        toml: Bytes(include_bytes!("../../config.toml").to_vec()),
        env: vec![],
        client_secret: Bytes(
            br#"{"web":{"client_id":"1.apps","client_secret":"GOCSPX-AbCdEfGhIjKlMnOpQrStUvWxYz01"}}"#
                .to_vec(),
        ),
        key: Bytes(vec![7; 32]),
        previous_key: None,
        mirror_url: "s3://my-bucket/a/b".into(),
    }];
    crate::fuzz("config", fixed, case(), |case| check(dir.path(), case));
}
