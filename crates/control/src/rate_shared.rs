//! Rate-limit buckets shared by every replica through Redis (`limits.rate.redis`), so that a
//! limit is exact across replicas rather than per replica.
//!
//! One call is one round trip: a Lua script ([`TAKE`]) receives the keys of every bucket the
//! call falls under and, atomically on the server, refills each from the time elapsed (Redis'
//! own clock, so replicas' clocks do not matter), refuses if any bucket lacks a token (taking
//! nothing, like the in-memory limiter), or takes one token from each. A bucket is a hash
//! (`t` tokens, `ts` milliseconds) that expires once it would have refilled completely, when
//! a missing key means the same thing: a full bucket.
//!
//! Keys are `{key_prefix}:{limit id}:{32 hex digits of SHA-256(bucket name)}`: bounded in length
//! whatever the agent or tool names are.
//!
//! Fail closed: a call whose buckets Redis cannot answer within [`REDIS_TIMEOUT`] (down,
//! unreachable, slow, or an error reply) is refused as unavailable, never admitted unlimited.

use std::time::Duration;

use portcullis_config::{RedisRate, RedisTls};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

/// The longest a call waits for Redis before it is refused.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Refill then take, for every bucket of a call, in one atomic step.
///
/// `KEYS[i]` is a bucket; `ARGV[2i-1]` its refill rate in tokens per millisecond and `ARGV[2i]`
/// its burst. Answers `{0, 0}` when admitted (one token taken from each bucket) or
/// `{i, wait}` when bucket `i` (1-based; the one with the longest wait) refuses, `wait` being
/// the milliseconds until it has a token; nothing is taken then.
const TAKE: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tokens = {}
local refuse, longest = 0, 0
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local t, ts = tonumber(state[1]), tonumber(state[2])
  if t == nil or ts == nil then t, ts = burst, now end
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  t = math.min(burst, t + elapsed * rate)
  tokens[i] = t
  if t < 1 then
    local wait = math.ceil((1 - t) / rate)
    if wait < 1 then wait = 1 end
    if refuse == 0 or wait > longest then refuse, longest = i, wait end
  end
end
if refuse > 0 then return {refuse, longest} end
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  redis.call('HSET', KEYS[i], 't', tostring(tokens[i] - 1), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate) + 1000)
end
return {0, 0}
";

/// One bucket of a call: its key, refill rate (tokens per second) and burst.
pub(crate) struct SharedBucket {
    pub key: String,
    pub per_second: f64,
    pub burst: u64,
}

/// What Redis said about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedVerdict {
    Admitted,
    /// Bucket `index` (into the call's list) refuses; a token is back in `wait_ms`.
    Refused {
        index: usize,
        wait_ms: u64,
    },
}

/// The Redis connection of one limiter.
pub(crate) struct SharedBuckets {
    connection: ConnectionManager,
    key_prefix: String,
    script: redis::Script,
}

impl SharedBuckets {
    /// Prepares the connection; it is opened on first use and re-opened after failures, so a
    /// Redis that is down at start-up refuses calls rather than the gateway refusing to start.
    pub fn new(config: &RedisRate) -> Result<SharedBuckets, redis::RedisError> {
        // rustls (rediss://) needs a process-wide crypto provider: ring, as everywhere else.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match &config.tls {
            None => redis::Client::open(config.url.expose())?,
            Some(tls) => redis::Client::build_with_tls(config.url.expose(), certificates(tls)?)?,
        };
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT / 2))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(REDIS_TIMEOUT);
        Ok(SharedBuckets {
            connection: ConnectionManager::new_lazy_with_config(client, settings)?,
            key_prefix: config.key_prefix.clone(),
            script: redis::Script::new(TAKE),
        })
    }

    /// The key of bucket `name` under the limit `limit_id`.
    pub fn key(&self, limit_id: &str, name: &str) -> String {
        let digest = hex::encode(Sha256::digest(name.as_bytes()));
        format!("{}:{limit_id}:{}", self.key_prefix, &digest[..32])
    }

    /// Refills and takes from `buckets` in one round trip (see [`TAKE`]).
    pub async fn take(&self, buckets: &[SharedBucket]) -> Result<SharedVerdict, String> {
        let mut invocation = self.script.prepare_invoke();
        for bucket in buckets {
            invocation
                .key(&bucket.key)
                .arg(bucket.per_second / 1000.0)
                .arg(bucket.burst);
        }
        let mut connection = self.connection.clone();
        let answer: (u64, u64) =
            match tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut connection))
                .await
            {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => return Err(error.to_string()),
                Err(_) => return Err(format!("no answer within {REDIS_TIMEOUT:?}")),
            };
        match answer {
            (0, _) => Ok(SharedVerdict::Admitted),
            (index, wait_ms) => match usize::try_from(index - 1) {
                Ok(index) if index < buckets.len() => Ok(SharedVerdict::Refused { index, wait_ms }),
                _ => Err(format!(
                    "unexpected answer from the rate-limit script: {answer:?}"
                )),
            },
        }
    }
}

/// The PEM files of `limits.rate.redis_tls`, read now (a file that went away since the config
/// was checked is an error at start-up, not a silent fallback to the system's roots).
fn certificates(tls: &RedisTls) -> Result<redis::TlsCertificates, redis::RedisError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from(std::io::Error::new(
                e.kind(),
                format!("limits.rate.redis_tls: cannot read {}: {e}", path.display()),
            ))
        })
    };
    let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        None => None,
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}
