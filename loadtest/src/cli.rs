//! The command line, and what its scenario means for a run: how many
//! connections at what rate, which topics each joins, what the publisher
//! sends, how many deliveries to expect.
//!
//! Pure: parses and derives, nothing else. It must not open connections,
//! resolve names, spawn anything or read /proc; the parent, the workers and
//! the report all ask it the same questions so they agree on the answers.

use crate::publish;
use crate::stats::Counters;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Parser, Clone)]
#[command(
    name = "loadtest",
    version,
    about = "Phoenix-protocol load generator for the gateway"
)]
pub(crate) struct Cli {
    /// WebSocket endpoint of the gateway; several, comma-separated, spread the
    /// connections round-robin over several pods. With `--transport longpoll`
    /// `ws://H/P/websocket?Q` means `http://H/P/longpoll?Q`; an `http://` URL
    /// of the long-poll endpoint is taken as it is.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0"
    )]
    pub(crate) url: Vec<String>,
    /// How clients connect: WebSocket, or Phoenix long-poll (two keep-alive
    /// HTTP connections per client: one for polls, one for POSTs).
    #[arg(long, global = true, value_enum, default_value = "websocket")]
    pub(crate) transport: TransportKind,
    /// How long the measured phase lasts: 10, 10s, 500ms, 2m.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Loopback source addresses to spread client sockets over (127.0.0.2,127.0.0.3,...).
    #[arg(long, global = true, value_delimiter = ',')]
    pub(crate) source_ips: Vec<IpAddr>,
    /// Connections per worker process; more than this many are spread over several processes.
    #[arg(long, global = true, default_value_t = 15000)]
    pub(crate) per_worker: u64,
    /// Write the full results as JSON here.
    #[arg(long, global = true)]
    pub(crate) json: Option<std::path::PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long, global = true)]
    pub(crate) html: Option<std::path::PathBuf>,
    /// Exit non-zero when errors exceed this percentage of operations.
    #[arg(long, global = true, default_value_t = 1.0)]
    pub(crate) max_error_rate: f64,
    /// Gateway process ids whose memory (VmRSS) is read before and after.
    #[arg(long, global = true, value_delimiter = ',')]
    pub(crate) gateway_pid: Vec<u32>,
    /// Topic names are PREFIX:N (room:* is public in config/example.toml).
    #[arg(long, global = true, default_value = "room:lt")]
    pub(crate) topic_prefix: String,
    /// Join with the param `user` set to the connection's index, so topics
    /// whose rule keys presence by it (room:* in config/example.toml) track
    /// every connection.
    #[arg(long, global = true)]
    pub(crate) join_user: bool,
    /// Bytes of padding in each published payload.
    #[arg(long, global = true, default_value_t = 0)]
    pub(crate) payload_pad: usize,
    /// How long receivers keep reading after publishing stops.
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration)]
    pub(crate) drain: Duration,
    #[arg(long, global = true, hide = true)]
    pub(crate) worker_index: Option<u64>,
    #[arg(long, global = true, hide = true)]
    pub(crate) worker_count: Option<u64>,
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

/// The client transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TransportKind {
    Websocket,
    Longpoll,
}

impl TransportKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TransportKind::Websocket => "websocket",
            TransportKind::Longpoll => "longpoll",
        }
    }
}

#[derive(Debug, Subcommand, Clone, Serialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub(crate) enum Scenario {
    /// Ramp N connections at R/s, each joining T topics; connect and join latency.
    Connect(ConnectArgs),
    /// Hold N joined connections for the duration; gateway memory per connection.
    Idle(ConnectArgs),
    /// S subscribers over T topics; one publisher at P msgs/s; publish->receive latency.
    Fanout(FanoutArgs),
    /// Every client pushes into one shared room at a rate and receives everyone's.
    Chat(ChatArgs),
    /// A topic with N present users over the pods; R joins/s into it; join and
    /// presence_state latency, Redis commands per join, diff frames per client.
    #[command(name = "presence-join")]
    #[serde(rename = "presence-join")]
    PresenceJoin(PresenceJoinArgs),
    /// N joined clients lose their pod at once (the gateway is killed and
    /// restarted, or the clients drop their connections) and reconnect with
    /// phoenix.js's backoff; refusals, accept-queue overflows, time to rejoin.
    #[serde(rename = "reconnect-storm")]
    ReconnectStorm(StormArgs),
    /// N clients joined to topics with history; the gateway is killed, every
    /// topic gets --behind messages (FCALL gateway_publish) while it is down,
    /// it is started again and every client rejoins from its last position;
    /// join+replay latency, recovered counts, lost/duplicate offsets, Redis time.
    Recover(RecoverArgs),
}

#[derive(Debug, Args, Clone, Serialize)]
pub(crate) struct ConnectArgs {
    /// Number of connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: u64,
    /// New connections per second.
    #[arg(short = 'r', long, default_value_t = 1000.0)]
    rate: f64,
    /// Topics each connection joins.
    #[arg(short = 't', long, default_value_t = 1)]
    topics: u64,
    /// Topics in all, when more than `-t`: connection N joins topics N·t,
    /// N·t+1, … modulo this (with `-t 1`, rooms of connections/rooms each).
    #[arg(long, default_value_t = 0)]
    rooms: u64,
}

#[derive(Debug, Args, Clone, Serialize)]
pub(crate) struct FanoutArgs {
    /// Subscribers (connections), spread round-robin over the topics.
    #[arg(short = 's', long, default_value_t = 1000)]
    subscribers: u64,
    /// Number of topics.
    #[arg(short = 't', long, default_value_t = 1)]
    topics: u64,
    /// Published messages per second (over all topics).
    #[arg(short = 'p', long, default_value_t = 100.0)]
    rate: f64,
    /// How the publisher publishes.
    #[arg(long, value_enum, default_value = "redis")]
    via: publish::Via,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,
    /// The gateway's [redis] prefix.
    #[arg(long, default_value = "phx:")]
    prefix: String,
    #[arg(long, default_value = "http://127.0.0.1:4000/api/broadcast")]
    api_url: String,
    #[arg(
        long,
        env = "GATEWAY_API_KEY",
        default_value = "",
        hide_env_values = true
    )]
    #[serde(skip)]
    api_key: String,
    /// Subscribers connected per second.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// redis-server's pid: its CPU time and `INFO commandstats` (on
    /// --redis-url) are read before and after the measured phase and drain.
    #[arg(long)]
    pub(crate) redis_pid: Option<u32>,
}

#[derive(Debug, Args, Clone, Serialize)]
pub(crate) struct ChatArgs {
    /// Clients in the room.
    #[arg(short = 'c', long, default_value_t = 50)]
    clients: u64,
    /// Messages each client pushes per second.
    #[arg(short = 'p', long, default_value_t = 1.0)]
    rate: f64,
    /// Clients connected per second.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
}

#[derive(Debug, Args, Clone, Serialize)]
pub(crate) struct PresenceJoinArgs {
    /// Users present in the topic before the measured phase (each a connection
    /// joined with `{"user": "pN"}`), spread round-robin over the --url pods.
    #[arg(long, default_value_t = 5000)]
    pub(crate) present: u64,
    /// Joins per second into the topic during the measured phase (new
    /// connections joining with `{"user": "jN"}`, staying until the end).
    #[arg(short = 'r', long, default_value_t = 200.0)]
    pub(crate) rate: f64,
    /// Present users connected per second during setup.
    #[arg(long, default_value_t = 2000.0)]
    pub(crate) connect_rate: f64,
    /// More present users written straight into Redis, as a pod of their own
    /// (`loadtest-seeded`) would: in every list and every presence_state,
    /// without connections (one process holds 20,000 at most, and every
    /// present connection's own join receives the whole list). Needs
    /// --redis-url; removed again at the end.
    #[arg(long, default_value_t = 0)]
    pub(crate) seeded: u64,
    /// The pods' Redis, whose `INFO commandstats` gives the Redis commands per
    /// join (none: not measured).
    #[arg(long)]
    pub(crate) redis_url: Option<String>,
    /// The pods' `[redis] prefix`, for --seeded.
    #[arg(long, default_value = "phx:")]
    pub(crate) prefix: String,
    /// The redis-server's pid, to tell its CPU time from the clients'.
    #[arg(long)]
    pub(crate) redis_pid: Option<u32>,
    /// How long observers wait for their lists to agree after the joins, at most.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) settle: Duration,
}

impl PresenceJoinArgs {
    /// Joins of the measured phase.
    pub(crate) fn joins(&self, duration: Duration) -> u64 {
        (self.rate * duration.as_secs_f64()).ceil() as u64
    }
}

#[derive(Debug, Args, Clone, Serialize)]
pub(crate) struct StormArgs {
    /// Clients (connections), connected and joined before the storm.
    #[arg(short = 'n', long, default_value_t = 19000)]
    pub(crate) connections: u64,
    /// New connections per second before the storm.
    #[arg(short = 'r', long, default_value_t = 5000.0)]
    pub(crate) rate: f64,
    /// Topics each client joins.
    #[arg(short = 't', long, default_value_t = 1)]
    pub(crate) topics: u64,
    /// Distinct topics in all (client g joins topics g*t .. g*t+t-1, modulo
    /// this): each is one Redis subscription the new pod makes again.
    #[arg(long, default_value_t = 1000)]
    pub(crate) distinct_topics: u64,
    /// A shell command that starts the gateway again and prints the new
    /// process id as the last line of its standard output (the gateway's own
    /// output must go elsewhere). With it, the first `--gateway-pid` is sent
    /// `--signal` and, once it has exited, this runs; without it, the
    /// clients drop their connections themselves and reconnect to the same
    /// process.
    #[arg(long)]
    pub(crate) restart_cmd: Option<String>,
    /// The signal that ends the gateway: KILL (a crash, an OOM kill, a lost
    /// node: every connection drops at once) or TERM (it drains first).
    #[arg(long, default_value = "KILL")]
    pub(crate) signal: String,
    /// How long every client may take to join again before the run gives up.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    #[serde(skip)]
    pub(crate) rejoin_timeout: Duration,
}

#[derive(Debug, Args, Clone, Serialize)]
pub(crate) struct RecoverArgs {
    /// Clients (connections), connected and joined before the restart.
    #[arg(short = 'n', long, default_value_t = 10000)]
    pub(crate) connections: u64,
    /// New connections per second before the restart.
    #[arg(short = 'r', long, default_value_t = 5000.0)]
    pub(crate) rate: f64,
    /// Topics each client joins.
    #[arg(short = 't', long, default_value_t = 1)]
    pub(crate) topics: u64,
    /// Distinct topics in all (client g joins topics g*t .. g*t+t-1, modulo this).
    #[arg(long, default_value_t = 1000)]
    pub(crate) distinct_topics: u64,
    /// Messages published to every topic while the gateway is down: how far
    /// behind each client rejoins.
    #[arg(long, default_value_t = 100)]
    pub(crate) behind: u64,
    /// Messages per second (round-robin over the topics) published from the
    /// restart until every client is back: the live side of the seam. The
    /// topics' history must keep `--behind` plus these (a `size` of 100 with
    /// `--behind 100` needs 0).
    #[arg(long, default_value_t = 100.0)]
    pub(crate) live_rate: f64,
    /// A shell command that starts the gateway again and prints the new
    /// process id as its last line (as reconnect-storm's).
    #[arg(long)]
    pub(crate) restart_cmd: String,
    /// The signal that ends the gateway.
    #[arg(long, default_value = "KILL")]
    pub(crate) signal: String,
    /// The gateway's Redis, for FCALL gateway_publish and INFO commandstats.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,
    /// The gateway's [redis] prefix.
    #[arg(long, default_value = "phx:")]
    pub(crate) prefix: String,
    /// redis-server's pid, for its CPU time.
    #[arg(long)]
    pub(crate) redis_pid: Option<u32>,
    /// How long every client may take to rejoin and receive its replay.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    #[serde(skip)]
    pub(crate) rejoin_timeout: Duration,
}

/// A bare number means seconds, so that `--duration 10` reads as people mean it.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

impl Cli {
    /// (connections, connect rate per second, topics, topics per connection, push interval)
    pub(crate) fn shape(&self) -> (u64, f64, u64, u64, Option<Duration>) {
        match &self.scenario {
            Scenario::Connect(a) | Scenario::Idle(a) => (
                a.connections,
                a.rate,
                a.topics.max(a.rooms).max(1),
                a.topics,
                None,
            ),
            Scenario::Fanout(a) => (a.subscribers, a.connect_rate, a.topics.max(1), 1, None),
            Scenario::Chat(a) => (
                a.clients,
                a.connect_rate,
                1,
                1,
                Some(Duration::from_secs_f64(1.0 / a.rate.max(0.001))),
            ),
            Scenario::PresenceJoin(a) => (
                a.present + a.joins(self.duration),
                a.connect_rate,
                1,
                1,
                None,
            ),
            Scenario::ReconnectStorm(a) => (
                a.connections,
                a.rate,
                a.distinct_topics.max(1),
                a.topics,
                None,
            ),
            Scenario::Recover(a) => (
                a.connections,
                a.rate,
                a.distinct_topics.max(1),
                a.topics,
                None,
            ),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self.scenario {
            Scenario::Connect(_) => "connect",
            Scenario::Idle(_) => "idle",
            Scenario::Fanout(_) => "fanout",
            Scenario::Chat(_) => "chat",
            Scenario::PresenceJoin(_) => "presence-join",
            Scenario::ReconnectStorm(_) => "reconnect-storm",
            Scenario::Recover(_) => "recover",
        }
    }

    pub(crate) fn topic(&self, i: u64) -> String {
        format!("{}:{i}", self.topic_prefix)
    }

    /// The topics connection `g` (a global index, whichever worker runs it)
    /// joins: derived from the index alone so the parent can count the
    /// subscribers of each topic without asking the workers.
    pub(crate) fn topics_of(&self, g: u64) -> Vec<String> {
        let (_, _, ntopics, per_conn, _) = self.shape();
        match &self.scenario {
            Scenario::Connect(_) | Scenario::Idle(_) => (0..per_conn)
                .map(|j| self.topic((g * per_conn + j) % ntopics.max(1)))
                .collect(),
            Scenario::Fanout(_) => vec![self.topic(g % ntopics)],
            Scenario::Chat(_) | Scenario::PresenceJoin(_) => vec![self.topic(0)],
            Scenario::ReconnectStorm(_) | Scenario::Recover(_) => (0..per_conn)
                .map(|j| self.topic((g * per_conn + j) % ntopics))
                .collect(),
        }
    }

    /// What the fan-out publisher is told to do (all of the measured phase,
    /// round-robin over every topic the subscribers joined).
    pub(crate) fn publish_spec(&self, a: &FanoutArgs) -> publish::PublishSpec {
        let (_, _, ntopics, _, _) = self.shape();
        publish::PublishSpec {
            via: a.via,
            topics: (0..ntopics).map(|t| self.topic(t)).collect(),
            rate: a.rate,
            duration: self.duration,
            pad: self.payload_pad,
            redis_url: a.redis_url.clone(),
            prefix: a.prefix.clone(),
            api_url: a.api_url.clone(),
            api_key: a.api_key.clone(),
        }
    }

    /// Deliveries a loss-free run makes: each published message once per
    /// joined subscriber of its topic (`published` counts per topic, fan-out
    /// only). None where the scenario delivers nothing to check.
    pub(crate) fn expected_deliveries(
        &self,
        published: Option<&[u64]>,
        c: &Counters,
    ) -> Option<u64> {
        let (_, _, ntopics, _, _) = self.shape();
        match (&self.scenario, published) {
            (Scenario::Fanout(a), Some(p)) => {
                let mut e = 0;
                for (t, &c) in p.iter().enumerate() {
                    let subs = (0..a.subscribers)
                        .filter(|g| g % ntopics == t as u64)
                        .count() as u64;
                    e += c * subs;
                }
                Some(e)
            }
            (Scenario::Chat(_), _) => Some(c.pushes_sent * c.joins_ok),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("loadtest").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn connections_spread_over_topics_as_expected_deliveries_assume() {
        let c = cli(&["fanout", "-s", "7", "-t", "3", "--topic-prefix", "r"]);
        let per_topic = |t: &str| (0..7).filter(|&g| c.topics_of(g) == [t]).count() as u64;
        assert_eq!(
            [per_topic("r:0"), per_topic("r:1"), per_topic("r:2")],
            [3, 2, 2]
        );
        let published = [10, 20, 30];
        assert_eq!(
            c.expected_deliveries(Some(&published), &Counters::default()),
            Some(10 * 3 + 20 * 2 + 30 * 2)
        );
        assert_eq!(c.expected_deliveries(None, &Counters::default()), None);
        let Scenario::Fanout(a) = &c.scenario else {
            panic!("{:?}", c.scenario)
        };
        assert_eq!(c.publish_spec(a).topics, ["r:0", "r:1", "r:2"]);

        let c = cli(&["connect", "-n", "4", "-t", "2", "--topic-prefix", "r"]);
        assert_eq!(c.topics_of(1), ["r:0", "r:1"]);
        assert_eq!(c.expected_deliveries(None, &Counters::default()), None);

        let c = cli(&[
            "presence-join",
            "--present",
            "10",
            "--rate",
            "4",
            "--duration",
            "2500ms",
        ]);
        assert_eq!(c.shape().0, 10 + 10, "present users, then the joiners");
        assert_eq!(c.name(), "presence-join");
        assert_eq!(c.topics_of(17), ["room:lt:0"]);

        let c = cli(&["chat", "-c", "5", "-p", "4"]);
        assert_eq!(c.topics_of(3), ["room:lt:0"]);
        assert_eq!(c.shape().4, Some(Duration::from_millis(250)));
        let counters = Counters {
            pushes_sent: 8,
            joins_ok: 5,
            ..Counters::default()
        };
        assert_eq!(c.expected_deliveries(None, &counters), Some(40));

        let c = cli(&["reconnect-storm", "-n", "5", "--distinct-topics", "3"]);
        assert_eq!(c.name(), "reconnect-storm");
        assert_eq!(c.shape().0, 5);
        assert_eq!(c.topics_of(4), ["room:lt:1"]);
        assert_eq!(c.expected_deliveries(None, &Counters::default()), None);
        let Scenario::ReconnectStorm(a) = &c.scenario else {
            panic!("{:?}", c.scenario)
        };
        assert_eq!(
            (a.signal.as_str(), a.restart_cmd.as_deref()),
            ("KILL", None)
        );
        let c = cli(&[
            "recover",
            "-n",
            "5",
            "--distinct-topics",
            "3",
            "--restart-cmd",
            "x",
            "--topic-prefix",
            "hist:lt",
        ]);
        assert_eq!(c.name(), "recover");
        assert_eq!((c.shape().0, c.shape().2), (5, 3));
        assert_eq!(c.topics_of(4), ["hist:lt:1"]);
        assert_eq!(c.expected_deliveries(None, &Counters::default()), None);
        let Scenario::Recover(a) = &c.scenario else {
            panic!("{:?}", c.scenario)
        };
        assert_eq!((a.behind, a.signal.as_str()), (100, "KILL"));

        let c = cli(&["fanout", "--via", "fcall", "--redis-pid", "7"]);
        let Scenario::Fanout(a) = &c.scenario else {
            panic!("{:?}", c.scenario)
        };
        assert_eq!((a.via, a.redis_pid), (publish::Via::Fcall, Some(7)));
    }
}
