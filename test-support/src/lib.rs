//! What the integration tests of `gateway`, `pubsub-redis` and `loadtest`
//! share: one process guard, one Redis starter, one gateway starter, one
//! Phoenix client, one HTTP/1.1 client (redis-rs `redis-test` is the model).
//!
//! Real components only: `redis-server` and `gateway` processes of the test's
//! own, on free ports, killed when their handles drop, their logs printed
//! when the test panics. Every wait is bounded ([`wait`]); every test gets
//! its own names ([`temp::unique`], [`temp::prefix`]), so tests run in
//! parallel.
//!
//! | module | owns |
//! |---|---|
//! | [`temp`] | temp dirs, unique names, free ports, repo paths |
//! | [`wait`] | the shared time bounds and bounded polling |
//! | [`process`] | the process guard, starting on a free port |
//! | [`memory`] | a process's resident memory (`/proc/<pid>/status`) |
//! | [`metrics`] | samples of a `/metrics` exposition |
//! | [`redis_server`] | `RedisServer` and `RedisConn` |
//! | [`redis_cluster`] | `RedisCluster`, three masters |
//! | [`redis_tls`] | certificates (`openssl`), `TlsRedis` |
//! | [`redis_sentinel`] | `SentinelSet`: master, replica, three sentinels |
//! | [`pod`] | `GatewayProcess`, a `gateway` binary with a typed config |
//! | [`cluster`] | one `RedisServer` and several pods on one prefix |
//! | [`server`] | `TestServer`, an endpoint served in-process |
//! | [`phoenix`] | `PhxClient`, the Phoenix client over WebSocket |
//! | [`raw_ws`] | `RawWs`, raw WebSocket frames over TCP (framing tests) |
//! | [`wire`] | `Wire`, V2 arrays on either serializer |
//! | [`http`] | the HTTP/1.1 client |
//! | [`longpoll`] | `LpClient`, the long-poll client |
//! | [`presence`] | the client-side presence view |
//! | [`jwt`] | tokens: HS256, RS256/ES256 keypairs, `alg: none` |
//! | [`room`] | the spec's `RoomChannel` fixture |
//! | [`bus`] | `TestBus`, a `pubsub-redis` bus that hands deliveries over |
//! | [`scrape`] | reading samples of a pod's `/metrics` |

pub mod bus;
pub mod cluster;
pub mod http;
pub mod jwt;
pub mod longpoll;
pub mod memory;
pub mod phoenix;
pub mod pod;
pub mod presence;
pub mod process;
pub mod raw_ws;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod redis_tls;
pub mod room;
pub mod scrape;
pub mod server;
pub mod temp;
pub mod wait;
pub mod wire;

pub use cluster::Cluster;
pub use longpoll::LpClient;
pub use phoenix::{broadcast, reply, PhxClient, Received};
pub use pod::{GatewayBuilder, GatewayProcess};
pub use presence::{Member, SimulatedPod, View};
pub use raw_ws::{RawFrame, RawWs};
pub use redis_cluster::RedisCluster;
pub use redis_server::{RedisConn, RedisServer};
pub use server::TestServer;
pub use temp::{free_port, unique, TempDir};
pub use wait::{SETTLE, START_TIMEOUT, TIMEOUT};
pub use wire::Wire;
