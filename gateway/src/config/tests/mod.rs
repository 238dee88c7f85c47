use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(pairs.iter().copied())
}

fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut c = Config::parse(text, "test.toml")?;
    c.apply_env(&env(pairs))?;
    c.validate()?;
    Ok(c)
}

/// The error message of a config that must fail; it must name `key`.
fn fails(text: &str, key: &str) {
    let err = load(text, &[]).expect_err(text).to_string();
    assert!(err.contains(key), "error {err:?} does not name {key:?}");
}

#[test]
fn defaults_give_one_socket() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.sockets.len(), 1);
    assert_eq!(c.sockets[0].path, "/socket");
    assert_eq!(c.server.listen, "127.0.0.1:4000");
    assert_eq!(c.redis.prefix, "phx:");
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../../../config/example.toml");
    let c = load(text, &[]).unwrap();
    assert_eq!(c.channels.len(), 3);
    assert!(
        c.api.key.is_none(),
        "the API stays off without GATEWAY_API_KEY"
    );
    let c = load(
        text,
        &[
            ("GATEWAY_API_KEY", "k"),
            ("PORT", "4100"),
            ("GATEWAY_JWT_SECRET", "s"),
        ],
    )
    .unwrap();
    assert_eq!(c.api.key.as_deref(), Some("k"));
    assert_eq!(c.server.listen, "127.0.0.1:4100");
    assert_eq!(
        c.sockets[0].jwt.as_ref().unwrap().secret.as_deref(),
        Some("s")
    );
}

#[test]
fn every_error_names_its_key() {
    fails("[server]\nlistn = 1", "listn");
    fails("[server]\nlisten = 5", "listen");
    fails("[server]\nlisten = \"nope\"", "server.listen");
    fails("[log]\nformat = \"xml\"", "format");
    fails("[api]\npath = \"api\"", "api.path");
    fails("[server]\nbody_timeout_ms = 0", "server.body_timeout_ms");
    fails(
        "[server]\nheader_timeout_ms = 99",
        "server.header_timeout_ms",
    );
    fails(
        "[server]\nmax_publish_bytes = 10",
        "server.max_publish_bytes",
    );
    fails(
        "[server]\nmax_publish_bytes = 50000000",
        "server.max_publish_bytes",
    );
    fails(
        "[[channel]]\npattern = \"r:*\"\nevents = [\"presence_diff\"]",
        "channel[0].events",
    );
    fails("[api]\nkey = \"\"", "api.key");
    fails("[[socket]]\npath = \"socket\"", "socket[0].path");
    fails("[[socket]]\n[[socket]]", "socket[1].path");
    fails("[[socket]]\nrequire_token = true", "socket[0].jwt");
    fails(
        "[[socket]]\n[socket.jwt]\nalgorithm = \"HS256\"",
        "socket[0].jwt.secret",
    );
    fails(
        "[[socket]]\n[socket.jwt]\nalgorithm = \"XX1\"\nsecret = \"s\"",
        "socket[0].jwt.algorithm",
    );
    fails(
        "[[socket]]\n[socket.jwt]\nalgorithm = \"RS256\"",
        "socket[0].jwt.public_key_file",
    );
    fails(
        "[[socket]]\n[socket.jwt]\nalgorithm = \"ES256\"\npublic_key_file = \"/nonexistent.pem\"",
        "socket[0].jwt.public_key_file",
    );
    fails("[[socket]]\nsocket_id = \"u:{sub\"", "socket[0].socket_id");
    fails("[[socket]]\ncheck_origin = true", "socket[0].check_origin");
    fails(
        "[[socket]]\ncheck_origin = [\"https://\"]",
        "socket[0].check_origin",
    );
    fails(
        "[[socket]]\nidle_timeout_ms = 10",
        "socket[0].idle_timeout_ms",
    );
    fails("[[socket]]\nmax_channels = 0", "socket[0].max_channels");
    fails(
        "[[socket]]\nmax_frame_size = 65536\noutbound_queue_bytes = 65535",
        "socket[0].outbound_queue_bytes",
    );
    fails(
        "[server]\nmax_publish_bytes = 2097152\n[[socket]]\nmax_frame_size = 65536\noutbound_queue_bytes = 1048576",
        "socket[0].outbound_queue_bytes",
    );
    fails("[[channel]]\npattern = \"a*b\"", "channel[0].pattern");
    fails("[[channel]]\npattern = \"user:{sub}\"", "channel[0].policy");
    fails(
        "[[channel]]\npattern = \"a:*\"\nsockets = [\"/nope\"]",
        "channel[0].sockets",
    );
    fails(
        "[[channel]]\npattern = \"a:*\"\nevents = [\"phx_join\"]",
        "channel[0].events",
    );
    fails(
        "[[channel]]\npattern = \"a:*\"\npolicy = \"secret\"",
        "policy",
    );
    fails("[[channel]]\npatern = \"a:*\"", "patern");
    fails("[demo]\nenabled = true\nsocket = \"/other\"", "demo.socket");
    fails("[redis]\nurl = \"http://127.0.0.1\"", "redis.url");
    fails("[redis]\nprefix = \"a*\"", "redis.prefix");
    // Hash tags in the prefix would put every key of a cluster in one slot.
    fails(
        "[redis]\nurl = \"redis://a:1\"\ncluster = true\nprefix = \"{a}:\"",
        "redis.prefix",
    );
    assert!(load("[redis]\nurl = \"redis://a:1\"\nprefix = \"{a}:\"", &[]).is_ok());
    assert!(load("[redis]\nurl = \"redis://127.0.0.1:6390\"", &[]).is_ok());
}

#[test]
fn env_errors_name_the_variable() {
    let err = load("", &[("PORT", "eighty")]).unwrap_err().to_string();
    assert!(err.contains("PORT"), "{err}");
    let err = load("", &[("GATEWAY_LOG_FORMAT", "xml")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("GATEWAY_LOG_FORMAT"), "{err}");
}

#[test]
fn jwt_secret_from_env_satisfies_validation() {
    let text = "[[socket]]\nrequire_token = true\n[socket.jwt]\nalgorithm = \"HS256\"";
    assert!(load(text, &[]).is_err());
    assert!(load(text, &[("GATEWAY_JWT_SECRET", LONG_SECRET)]).is_ok());
}

/// 32 bytes: the shortest HS* secret outside development mode.
const LONG_SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn short_jwt_secrets_need_development_mode() {
    let jwt = |secret: &str| format!("[[socket]]\n[socket.jwt]\nsecret = \"{secret}\"\n");
    let short = &LONG_SECRET[1..];
    fails(&jwt(short), "socket[0].jwt.secret");
    let err = load(&jwt(short), &[]).unwrap_err().to_string();
    assert!(err.contains("GATEWAY_DEV=1"), "{err}");
    // From the environment too, which replaces the file's secret.
    let env_short = [("GATEWAY_JWT_SECRET", short)];
    assert!(load(&jwt(LONG_SECRET), &env_short).is_err());
    assert!(load(&jwt(LONG_SECRET), &[]).is_ok());
    // Development mode, from the file or the environment, accepts it.
    assert!(load(&format!("[server]\ndev = true\n{}", jwt(short)), &[]).is_ok());
    assert!(load(&jwt(short), &[("GATEWAY_DEV", "1")]).is_ok());
    let dev_off = [("GATEWAY_DEV", "0")];
    assert!(load(&format!("[server]\ndev = true\n{}", jwt(short)), &dev_off).is_err());
    fails(
        &jwt(LONG_SECRET).replace("[[socket]]", "[server]\ndev = \"yes\"\n[[socket]]"),
        "dev",
    );
    let err = load(&jwt(LONG_SECRET), &[("GATEWAY_DEV", "yes")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("GATEWAY_DEV"), "{err}");
    // RS*/ES* keys are files, not secrets: no length rule.
    let rs = "[[socket]]\n[socket.jwt]\nalgorithm = \"RS256\"\nsecret = \"s\"\n";
    fails(rs, "socket[0].jwt.public_key_file");
}

/// The example's demo secret works only in development mode, and is
/// flagged so the pod warns; a secret from the environment replaces it.
#[test]
fn the_demo_secret_is_flagged() {
    let text = include_str!("../../../../config/example.toml");
    let demo = |pairs: &[(&str, &str)]| {
        let c = load(text, pairs).unwrap();
        c.validate().unwrap().sockets[0].demo_secret
    };
    assert!(demo(&[]));
    assert!(demo(&[("GATEWAY_JWT_SECRET", "")]), "empty counts as unset");
    assert!(!demo(&[("GATEWAY_JWT_SECRET", LONG_SECRET)]));
    let err = load(text, &[("GATEWAY_DEV", "0")]).unwrap_err().to_string();
    assert!(err.contains("socket[0].jwt.secret"), "{err}");
}

/// A leeway past the epoch broke jsonwebtoken's `now - leeway` (found
/// writing the `config` fuzz target, which now verifies a token per socket).
#[test]
fn jwt_leeway_is_at_most_a_day() {
    let jwt = |l: u64| {
        format!("[[socket]]\n[socket.jwt]\nsecret = \"{LONG_SECRET}\"\nleeway_secs = {l}\n")
    };
    assert!(load(&jwt(86_400), &[]).is_ok());
    fails(&jwt(86_401), "socket[0].jwt.leeway_secs");
    fails(&jwt(3_000_000_000), "socket[0].jwt.leeway_secs");
}

#[test]
fn presence_rules() {
    let text = include_str!("../../../../config/example.toml");
    let c = load(text, &[]).unwrap();
    let room = c.channels[0].presence.as_ref().unwrap();
    assert_eq!(room.key_param.as_deref(), Some("user"));
    let private = c.channels[1].presence.as_ref().unwrap();
    assert_eq!(private.key_claim.as_deref(), Some("sub"));
    assert_eq!(
        c.validate().unwrap().presence,
        crate::PresenceConfig::default()
    );

    let rule = |p: &str| format!("[[channel]]\npattern = \"room:*\"\n[channel.presence]\n{p}\n");
    fails(&rule(""), "channel[0].presence.key_claim");
    fails(
        &rule("key_claim = \"sub\"\nkey_param = \"u\""),
        "channel[0].presence.key_claim",
    );
    fails(&rule("key_param = \"\""), "channel[0].presence.key_param");
    // A claim needs tokens.
    fails(
        &rule("key_claim = \"sub\""),
        "channel[0].presence.key_claim",
    );
    fails(
        &rule("key_param = \"u\"\nmeta_params = [\"phx_ref\"]"),
        "channel[0].presence.meta_params",
    );
    fails(&rule("key_param = \"u\"\nbogus = 1"), "bogus");
    fails(
        &rule("key_param = \"u\"\nupdate_event = \"phx_x\""),
        "channel[0].presence.update_event",
    );
    // Presence works on a Redis Cluster.
    let cluster = "[redis]\nurl = \"redis://a:1\"\ncluster = true\n";
    let c = load(&format!("{cluster}{}", rule("key_param = \"u\"")), &[]).unwrap();
    assert!(c.validate().unwrap().channels[0].presence.is_some());
    fails("[presence]\npod_timeout_ms = 10", "presence.pod_timeout_ms");
    fails("[presence]\nbatch_ms = 60000", "presence.batch_ms");
    fails("[presence]\nbatch_ms = 50", "presence.batch_ms");
    let c = load("[presence]\nbatch_ms = 100\npod_timeout_ms = 2000", &[]).unwrap();
    assert_eq!(
        c.validate().unwrap().presence.pod_timeout,
        std::time::Duration::from_secs(2)
    );
}

#[test]
fn lifecycle_keys() {
    let rule = |body: &str| format!("[[channel]]\npattern = \"p:*\"\n[channel.lifecycle]\n{body}");
    let redis = "[redis]\nurl = \"redis://a:1\"\n";
    let c = load(&format!("{redis}{}", rule("")), &[]).unwrap();
    let l = c.validate().unwrap().channels[0].lifecycle.clone().unwrap();
    assert_eq!((l.stream.as_str(), l.max_len), ("events", 100_000));
    // Needs Redis, and one server.
    fails(&rule(""), "channel[0].lifecycle");
    fails(
        &format!("{redis}cluster = true\n{}", rule("")),
        "channel[0].lifecycle",
    );
    fails(
        &format!("{redis}{}", rule("stream = \"\"")),
        "channel[0].lifecycle.stream",
    );
    fails(
        &format!("{redis}{}", rule("stream = \"a b\"")),
        "channel[0].lifecycle.stream",
    );
    fails(
        &format!("{redis}{}", rule("max_len = 0")),
        "channel[0].lifecycle.max_len",
    );
    fails(&format!("{redis}{}", rule("bogus = 1")), "bogus");
}

#[test]
fn forward_rules() {
    let redis = "[redis]\nurl = \"redis://127.0.0.1:1\"\n";
    let rule = |mode: &str, forward: &str| {
        format!(
            "{redis}[[channel]]\npattern = \"chat:*\"\nevents = [\"new_msg\"]\nmode = \"{mode}\"\n{forward}"
        )
    };
    let ok = load(
        &rule("forward", "[channel.forward]\nstream = \"chat\"\n"),
        &[],
    )
    .unwrap();
    let f = ok.validate().unwrap().channels[0].forward.clone().unwrap();
    assert_eq!(f.stream, "in:chat");
    assert_eq!(f.reply, ReplyMode::Worker);
    assert_eq!(f.reply_timeout, std::time::Duration::from_secs(5));
    assert_eq!((f.max_len, f.max_pending, f.rate), (100_000, 16, 50));
    assert_eq!(f.claims, None);
    let table = |extra: &str| format!("[channel.forward]\nstream = \"chat\"\n{extra}\n");
    let on_store = load(
        &rule(
            "forward",
            &table("reply = \"on_store\"\nclaims = [\"sub\"]"),
        ),
        &[],
    )
    .unwrap();
    let f = on_store.validate().unwrap().channels[0]
        .forward
        .clone()
        .unwrap();
    assert_eq!(f.reply, ReplyMode::OnStore);
    assert_eq!(f.claims, Some(vec!["sub".to_owned()]));

    fails(&rule("forward", ""), "channel[0].mode");
    fails(&rule("broadcast", &table("")), "channel[0].forward");
    fails(
        &rule("forward", &table("")).replace(redis, ""),
        "channel[0].forward",
    );
    fails(
        &rule("forward", &table("")).replace("events = [\"new_msg\"]\n", ""),
        "channel[0].events",
    );
    fails(
        &rule("forward", "[channel.forward]\nstream = \"a b\"\n"),
        "channel[0].forward.stream",
    );
    fails(&rule("forward", "[channel.forward]\n"), "stream");
    fails(
        &rule("forward", &table("reply_timeout_ms = 0")),
        "channel[0].forward.reply_timeout_ms",
    );
    fails(
        &rule("forward", &table("reply_timeout_ms = 120001")),
        "channel[0].forward.reply_timeout_ms",
    );
    fails(
        &rule("forward", &table("max_len = 0")),
        "channel[0].forward.max_len",
    );
    fails(
        &rule("forward", &table("max_pending = 0")),
        "channel[0].forward.max_pending",
    );
    fails(
        &rule("forward", &table("rate = 0")),
        "channel[0].forward.rate",
    );
    fails(
        &rule("forward", &table("claims = [\"\"]")),
        "channel[0].forward.claims",
    );
    fails(&rule("forward", &table("reply = \"never\"")), "reply");
    fails(&rule("forward", &table("bogus = 1")), "bogus");
}

#[test]
fn longpoll_keys() {
    let c = load("", &[]).unwrap();
    assert!(!c.sockets[0].longpoll.enabled, "off by default, as Phoenix");
    assert_eq!(c.sockets[0].longpoll.window_ms, 10_000);
    assert_eq!(c.sockets[0].longpoll.session_timeout_ms, 15_000);
    assert_eq!(c.longpoll.relay_timeout_ms, 2000);
    let example = load(include_str!("../../../../config/example.toml"), &[]).unwrap();
    assert!(example.sockets[0].longpoll.enabled);

    let lp = |body: &str| format!("[[socket]]\n[socket.longpoll]\nenabled = true\n{body}");
    fails(&lp("window_ms = 10"), "socket[0].longpoll.window_ms");
    fails(&lp("window_ms = 19000"), "socket[0].longpoll.window_ms");
    fails(
        &lp("window_ms = 5000\nsession_timeout_ms = 4000"),
        "socket[0].longpoll.session_timeout_ms",
    );
    fails(&lp("max_buffer = 0"), "socket[0].longpoll.max_buffer");
    fails(&lp("max_body = 10"), "socket[0].longpoll.max_body");
    fails(&lp("windw_ms = 1"), "windw_ms");
    fails("[longpoll]\nsecret = \"short\"", "longpoll.secret");
    fails(
        "[longpoll]\nrelay_timeout_ms = 1",
        "longpoll.relay_timeout_ms",
    );

    let c = load("", &[("GATEWAY_LONGPOLL_SECRET", "0123456789abcdef0123")]).unwrap();
    assert_eq!(c.longpoll.secret.as_deref(), Some("0123456789abcdef0123"));
    let err = load("", &[("GATEWAY_LONGPOLL_SECRET", "short")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("longpoll.secret"), "{err}");
}

/// Configs serialize back to TOML that parses to the same thing, so tests
/// (and tools) can write typed configs instead of formatting TOML by hand.
#[test]
fn serializes_back_to_the_same_config() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/example.toml"
    ))
    .unwrap();
    let parsed = Config::parse(&text, "example.toml").unwrap();
    let written = toml::to_string(&parsed).unwrap();
    let again = Config::parse(&written, "written").unwrap();
    assert_eq!(format!("{parsed:?}"), format!("{again:?}"));
    let defaults = Config::parse("", "(defaults)").unwrap();
    let written = toml::to_string(&defaults).unwrap();
    assert_eq!(
        format!("{defaults:?}"),
        format!("{:?}", Config::parse(&written, "w").unwrap())
    );
}

mod docs;

/// `max_connections` is fitted to the open-files limit before validation,
/// so the settings carry the fitted value.
#[test]
fn max_connections_fits_the_open_files_limit() {
    let mut c = Config::parse("[server]\nmax_connections = 10000", "t").unwrap();
    assert_eq!(c.fit_to_fd_limit(100_000), None, "enough descriptors");
    let lowered = c.fit_to_fd_limit(1024).unwrap();
    assert_eq!(
        lowered,
        Lowered {
            configured: 10_000,
            lowered_to: 1024 - FD_MARGIN as usize,
            open_files: 1024
        }
    );
    assert_eq!(c.server.max_connections, 960);
    let settings = c.validate().unwrap();
    assert_eq!(settings.server.limits.max_connections, Some(960));
    assert_eq!(
        settings.server.limits.max_sockets,
        Some(960),
        "WebSocket and plain HTTP connections share the descriptors"
    );
    assert_eq!(settings.server.limits.max_http_connections, Some(50_000));
    assert_eq!(
        Config::parse("", "t")
            .unwrap()
            .validate()
            .unwrap()
            .server
            .limits
            .max_sockets,
        None,
        "not enforced without a known limit"
    );

    let mut tiny = Config::parse("", "t").unwrap();
    assert_eq!(tiny.fit_to_fd_limit(10).map(|l| l.lowered_to), Some(1));
    let mut unlimited = Config::parse("[server]\nmax_connections = 0", "t").unwrap();
    assert_eq!(unlimited.fit_to_fd_limit(10), None, "0 means no limit");
    assert_eq!(
        unlimited.validate().unwrap().server.limits.max_connections,
        None
    );
}

/// The defaults are the library's own, so a number is written once.
#[test]
fn defaults_are_the_librarys() {
    use crate::socket::{LongPollConfig, SocketConfig};
    let s = load("[[socket]]\n[socket.longpoll]\nenabled = true", &[])
        .unwrap()
        .validate()
        .unwrap();
    let lib = SocketConfig {
        longpoll: Some(LongPollConfig::default()),
        ..SocketConfig::default()
    };
    assert_eq!(format!("{:?}", s.sockets[0].config), format!("{lib:?}"));
    assert_eq!(s.presence, crate::PresenceConfig::default());
    assert_eq!(
        s.longpoll.relay_timeout,
        crate::endpoint::DEFAULT_RELAY_TIMEOUT
    );
    let url = "redis://127.0.0.1:6390";
    let s = load(&format!("[redis]\nurl = \"{url}\""), &[])
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(
        format!("{:?}", s.redis.unwrap()),
        format!("{:?}", pubsub_redis::Config::new(url))
    );
}

/// What `validate` hands to `app`: origins parsed, rate and long-poll set,
/// the verifier built, the drain timings as durations.
#[test]
fn sections_convert_into_the_librarys_types() {
    use crate::socket::{CheckOrigin, OriginRule};
    use std::time::Duration;
    let text = "[server]\nmax_memory_mb = 2\nmetrics_listen = \"127.0.0.1:9090\"\n\
                [api]\nkey = \"k\"\n[demo]\nenabled = true\n\
                [[socket]]\ncheck_origin = [\"//*.example.com\"]\npush_rate = 0\n\
                [socket.jwt]\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
    let s = load(text, &[]).unwrap().validate().unwrap();
    let socket = &s.sockets[0];
    assert_eq!(
        socket.config.check_origin,
        CheckOrigin::Allow(vec![OriginRule::parse("//*.example.com").unwrap()])
    );
    assert_eq!(socket.config.push_rate, None);
    assert!(
        socket.config.longpoll.is_none(),
        "long-poll is off by default"
    );
    assert!(socket.auth.verifier.is_some());
    assert_eq!(socket.auth.token_param, "token");
    assert_eq!(s.server.limits.max_memory, Some(2 << 20));
    assert_eq!(
        s.server.metrics_listen,
        Some("127.0.0.1:9090".parse().unwrap())
    );
    assert_eq!(s.server.shutdown.deadline, Duration::from_secs(45));
    assert_eq!(s.api.unwrap().path, "/api/broadcast");
    assert_eq!(s.demo.as_deref(), Some("/socket"));
    assert!(s.redis.is_none());
}

/// Memory bounds: the shipped config sets them, and `max_payload = 0`
/// leaves a rule to `max_frame_size`.
#[test]
fn memory_bounds() {
    let example = load(include_str!("../../../../config/example.toml"), &[])
        .unwrap()
        .validate()
        .unwrap();
    assert!(example.server.limits.max_memory.is_some());
    let socket = &example.sockets[0].config;
    assert!(socket.max_frame_size > example.channels[0].max_payload.unwrap());
    assert!(socket.outbound_queue_bytes >= 4 * socket.max_frame_size);
    let text = "[[channel]]\npattern = \"a:*\"\n[[channel]]\npattern = \"b:*\"\nmax_payload = 0\n";
    let s = load(text, &[]).unwrap().validate().unwrap();
    assert_eq!(s.channels[0].max_payload, Some(DEFAULT_MAX_PAYLOAD));
    assert_eq!(s.channels[1].max_payload, None);
}

/// `[hooks]`, `[socket.hooks]` and `[channel.hooks]`: a secret whenever a
/// hook is set, `mode = "hook"` and a push hook together, plain http URLs.
#[test]
fn hooks_are_checked() {
    let secret = "[hooks]\nsecret = \"0123456789abcdef\"\n";
    let join = "[[channel]]\npattern = \"a:*\"\n[channel.hooks]\njoin = \"http://127.0.0.1:9/j\"\n";
    let err = load(join, &[]).unwrap_err().to_string();
    assert!(
        err.contains("hooks.secret") && err.contains("GATEWAY_HOOK_SECRET"),
        "{err}"
    );
    let s = load(join, &[("GATEWAY_HOOK_SECRET", "0123456789abcdef")])
        .unwrap()
        .validate()
        .unwrap();
    assert!(s.hook_secret.is_some() && s.channels[0].hooks.join.is_some());
    fails(
        &format!("{secret}{join}").replace("http://", "https://"),
        "channel[0].hooks.join",
    );
    fails("[hooks]\nsecret = \"short\"", "hooks.secret");
    fails(
        &format!("{secret}[[channel]]\npattern = \"a:*\"\nmode = \"hook\""),
        "channel[0].mode",
    );
    fails(
        &format!("{secret}[[channel]]\npattern = \"a:*\"\n[channel.hooks]\npush = \"http://h/p\""),
        "channel[0].hooks.push",
    );
    fails(
        &format!("{secret}[[channel]]\npattern = \"a:*\"\n[channel.hooks]\n"),
        "channel[0].hooks",
    );
    fails(
        &format!("{secret}[[channel]]\npattern = \"a:*\"\n[channel.hooks]\njoin = \"http://h/j\"\ntimeout_ms = 0"),
        "channel[0].hooks.timeout_ms",
    );
    fails(
        &format!(
            "{secret}[[socket]]\n[socket.hooks]\nconnect = \"http://h/c\"\nmax_concurrency = 0"
        ),
        "socket[0].hooks.max_concurrency",
    );
    fails(
        &format!(
            "{secret}[[socket]]\n[socket.hooks]\nconnect = \"http://h/c\"\nheaders = [\"Cookie\"]"
        ),
        "socket[0].hooks.headers",
    );
    fails(
        &format!("{secret}[[socket]]\n[socket.hooks]\n"),
        "socket[0].hooks.connect",
    );
    let push = "[[channel]]\npattern = \"a:*\"\nmode = \"hook\"\nevents = [\"e\"]\n[channel.hooks]\npush = \"http://h:8/p\"\n";
    let s = load(&format!("{secret}{push}"), &[])
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(s.channels[0].mode, Mode::Hook);
}

/// Found as papercuts by a new user (issue 19): a blank API key enabled
/// the API, and a host name in `GATEWAY_LISTEN` was refused.
#[test]
fn blank_api_keys_are_refused_and_host_names_listen() {
    let err = load("", &[("GATEWAY_API_KEY", " ")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("api.key") && err.contains("blank"), "{err}");

    let settings = load("", &[("GATEWAY_LISTEN", "localhost:4101")])
        .and_then(|c| c.validate())
        .map(|s| s.server.listen);
    assert_eq!(
        settings.ok(),
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], 4101)))
    );
    let err = load("", &[("GATEWAY_LISTEN", "no-such-host.invalid:4101")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.listen"), "{err}");
}

/// Log filters that would silence the logs are refused (issue 19).
#[test]
fn log_filters_that_silence_the_logs_are_refused() {
    for bad in ["verbose", "gateway=[", "info,chatty"] {
        let err = load("", &[("GATEWAY_LOG", bad)]).unwrap_err().to_string();
        assert!(err.contains("log.level"), "{bad}: {err}");
    }
    for good in ["info", "WARN", "info,pubsub_redis=debug", "gateway=debug"] {
        assert!(load("", &[("GATEWAY_LOG", good)]).is_ok(), "{good}");
    }
}
