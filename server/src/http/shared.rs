//! Answers every open dashboard page shares (`/api/hosts`,
//! `/api/sparklines`): built once, encoded once (JSON and gzip), tagged,
//! and handed to every page that asks while the answer is fresh, so N open
//! pages cost one build per period, not N. A page that sends back the tag
//! of the answer it holds (`If-None-Match`) gets `304 Not Modified`, no
//! body, when the new answer is the same.
//!
//! An answer is fresh for its period, or for four times what its build
//! took if that is longer: however large the fleet, one kind of answer
//! costs at most a quarter of a core.
//!
//! It must never hand out an answer older than that as current
//! ([`SharedAnswer::current`]), never run two builds of one answer at
//! once, and never gzip on an async worker thread (megabytes at 5,000
//! hosts).

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::time::Instant;

/// One encoded answer: the JSON, its gzip, and its tag.
#[derive(Debug)]
pub struct Encoded {
    json: Bytes,
    gzip: Bytes,
    /// A strong ETag (quoted): the same for the same tagged bytes within
    /// this process, different after a restart.
    etag: HeaderValue,
}

impl Encoded {
    /// The tag of this answer, as sent in `ETag`.
    pub fn etag(&self) -> &HeaderValue {
        &self.etag
    }

    /// The JSON bytes.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The answer to a request with `headers`: 304 when its
    /// `If-None-Match` holds this tag, else the gzip when it accepts gzip,
    /// else the JSON. Pages must ask again each time (`no-cache`): the
    /// tag says whether anything changed.
    pub fn respond(&self, headers: &HeaderMap) -> Response {
        let tag = self.etag.as_bytes();
        let matched = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().as_bytes() == tag || t.trim() == "*");
        let common = [
            (header::ETAG, self.etag.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
        ];
        if matched {
            return (StatusCode::NOT_MODIFIED, common).into_response();
        }
        let json = HeaderValue::from_static("application/json");
        if accepts_gzip(headers) {
            (
                common,
                [
                    (header::CONTENT_TYPE, json),
                    // The listener's compression layer leaves an answer
                    // that has an encoding alone.
                    (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
                ],
                self.gzip.clone(),
            )
                .into_response()
        } else {
            (common, [(header::CONTENT_TYPE, json)], self.json.clone()).into_response()
        }
    }
}

/// Whether `Accept-Encoding` names gzip (with a weight above zero).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// What a build hands over: the JSON to send, and where the part of it
/// that decides the tag starts (0, or past a timestamp that changes at
/// every build).
pub struct Built {
    pub json: Vec<u8>,
    /// The tag covers `json[tag_from..]`.
    pub tag_from: usize,
}

/// The last answer and when it was made.
struct Made {
    made: Instant,
    took: Duration,
    answer: Arc<Encoded>,
}

/// Tags answers: a new generation only when the tagged bytes differ from
/// the last answer's.
struct Tags {
    /// Told apart from an earlier run's tags (a page kept open across a
    /// restart must not get 304 for an answer it never saw).
    nonce: u64,
    generation: u64,
    last_tagged: Vec<u8>,
}

/// One shared answer (see the module doc).
pub struct SharedAnswer {
    /// What the tags start with (`"hosts"`, `"sparklines"`).
    name: &'static str,
    period: Duration,
    last: Mutex<Option<Made>>,
    /// Held for a whole build, so there is one at a time, and the tags.
    building: tokio::sync::Mutex<Tags>,
}

/// Why a build failed: the build's own error, or the encoding's.
#[derive(Debug)]
pub enum SharedError<E> {
    Build(E),
    Encode(String),
}

impl SharedAnswer {
    pub fn new(name: &'static str, period: Duration) -> SharedAnswer {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        SharedAnswer {
            name,
            period,
            last: Mutex::new(None),
            building: tokio::sync::Mutex::new(Tags {
                nonce,
                generation: 0,
                last_tagged: Vec::new(),
            }),
        }
    }

    /// The last answer, fresh or not.
    pub fn last(&self) -> Option<Arc<Encoded>> {
        self.lock().as_ref().map(|m| Arc::clone(&m.answer))
    }

    /// Whether the last answer is still fresh.
    pub fn is_fresh(&self) -> bool {
        self.lock().as_ref().is_some_and(|m| self.fresh(m))
    }

    /// Whether a build runs now.
    pub fn is_building(&self) -> bool {
        self.building.try_lock().is_err()
    }

    fn fresh(&self, m: &Made) -> bool {
        m.made.elapsed() < self.lifetime(m)
    }

    fn lifetime(&self, m: &Made) -> Duration {
        self.period.max(m.took * 4)
    }

    /// How long the next answer will likely serve: the period, or four
    /// times what the last build took if that is longer. Pages poll at it
    /// (`poll_ms`): asking more often would only get the same answer.
    pub fn period_now(&self) -> Duration {
        self.lock()
            .as_ref()
            .map_or(self.period, |m| self.lifetime(m))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Made>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh answer: the last one if it is fresh, else one built now by
    /// `build` (a request that comes while another builds waits for that
    /// build and takes its answer).
    pub async fn current<E, F, Fut>(&self, build: F) -> Result<Arc<Encoded>, SharedError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Built, E>>,
    {
        if let Some(m) = self.lock().as_ref().filter(|m| self.fresh(m)) {
            return Ok(Arc::clone(&m.answer));
        }
        let mut tags = self.building.lock().await;
        // Another request may have built it while this one waited.
        if let Some(m) = self.lock().as_ref().filter(|m| self.fresh(m)) {
            return Ok(Arc::clone(&m.answer));
        }
        let started = Instant::now();
        let built = build().await.map_err(SharedError::Build)?;
        let tagged = built.json.get(built.tag_from..).unwrap_or_default();
        if tags.generation == 0 || tags.last_tagged != tagged {
            tags.generation += 1;
            tags.last_tagged = tagged.to_vec();
        }
        let etag = format!("\"{}-{:x}-{}\"", self.name, tags.nonce, tags.generation);
        let json = built.json;
        let (json, gzip) = tokio::task::spawn_blocking(move || gzip(&json).map(|g| (json, g)))
            .await
            .map_err(|e| SharedError::Encode(e.to_string()))?
            .map_err(|e| SharedError::Encode(e.to_string()))?;
        let answer = Arc::new(Encoded {
            json: Bytes::from(json),
            gzip: Bytes::from(gzip),
            etag: HeaderValue::from_str(&etag).map_err(|e| SharedError::Encode(e.to_string()))?,
        });
        *self.lock() = Some(Made {
            made: Instant::now(),
            took: started.elapsed(),
            answer: Arc::clone(&answer),
        });
        Ok(answer)
    }
}

/// Runs `work` as its own task and waits for it at most `wait`: `None`
/// when it is not done by then (it goes on, and what it makes is there for
/// the next request), else its result (`Err` if it panicked). So a first
/// answer that takes long (the sparklines of a large fleet) keeps no page
/// waiting past `wait`.
pub async fn within<T: Send + 'static>(
    wait: Duration,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<Result<T, tokio::task::JoinError>> {
    tokio::time::timeout(wait, tokio::spawn(work)).await.ok()
}

/// Gzip at the fastest level: an answer is compressed once per period for
/// every page, and on a LAN a few more bytes cost less than the CPU.
fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    e.write_all(bytes)?;
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn built(json: &str) -> Result<Built, ()> {
        Ok(Built {
            json: json.as_bytes().to_vec(),
            tag_from: 0,
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    async fn body_of(r: Response) -> Vec<u8> {
        use http_body_util::BodyExt;
        r.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_build_answers_nothing_in_time_and_goes_on() {
        let shared = Arc::new(SharedAnswer::new("t", Duration::from_secs(15)));
        let slow = {
            let shared = Arc::clone(&shared);
            async move {
                shared
                    .current(|| async {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        built("[1]")
                    })
                    .await
                    .is_ok()
            }
        };
        assert!(within(Duration::from_secs(2), slow).await.is_none());
        assert!(shared.last().is_none());
        assert!(shared.is_building());
        // The build went on without the request that started it.
        tokio::time::sleep(Duration::from_secs(29)).await;
        let answer = shared.last().expect("the build finished on its own");
        assert_eq!(answer.json().as_ref(), b"[1]");
        // A quick one is answered.
        let quick = within(Duration::from_secs(2), async { 7 }).await;
        assert_eq!(quick.map(Result::unwrap), Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn one_build_per_period_and_never_a_stale_answer() {
        let shared = SharedAnswer::new("t", Duration::from_secs(3));
        let builds = AtomicUsize::new(0);
        let build = |json: &'static str| {
            builds.fetch_add(1, Ordering::SeqCst);
            async move { built(json) }
        };
        assert_eq!(shared.period_now(), Duration::from_secs(3));
        let a = shared.current(|| build("[1]")).await.unwrap();
        // Within the period: the same answer, no build.
        tokio::time::advance(Duration::from_millis(2900)).await;
        let b = shared.current(|| build("[2]")).await.unwrap();
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert_eq!(b.json().as_ref(), b"[1]");
        assert_eq!(a.etag(), b.etag());
        // Past it: a new build, whose new bytes get a new tag.
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!shared.is_fresh());
        let c = shared.current(|| build("[2]")).await.unwrap();
        assert_eq!(builds.load(Ordering::SeqCst), 2);
        assert_eq!(c.json().as_ref(), b"[2]");
        assert_ne!(a.etag(), c.etag());
        // The same bytes again keep their tag.
        tokio::time::advance(Duration::from_secs(4)).await;
        let d = shared.current(|| build("[2]")).await.unwrap();
        assert_eq!(builds.load(Ordering::SeqCst), 3);
        assert_eq!(c.etag(), d.etag());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_build_stays_fresh_four_times_as_long() {
        let shared = SharedAnswer::new("t", Duration::from_secs(1));
        shared
            .current(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                built("[]")
            })
            .await
            .unwrap();
        assert_eq!(shared.period_now(), Duration::from_secs(8));
        tokio::time::advance(Duration::from_millis(7900)).await;
        assert!(shared.is_fresh());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!shared.is_fresh());
    }

    #[tokio::test]
    async fn pages_asking_at_once_share_one_build() {
        let shared = Arc::new(SharedAnswer::new("t", Duration::from_secs(60)));
        let builds = Arc::new(AtomicUsize::new(0));
        let (go, wait) = tokio::sync::watch::channel(false);
        let mut asks = Vec::new();
        for _ in 0..10 {
            let (shared, builds, mut wait) = (shared.clone(), builds.clone(), wait.clone());
            asks.push(tokio::spawn(async move {
                shared
                    .current(|| async move {
                        builds.fetch_add(1, Ordering::SeqCst);
                        // Held until every page asked.
                        let _ = wait.wait_for(|g| *g).await;
                        built("{}")
                    })
                    .await
                    .unwrap()
            }));
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while !shared.is_building() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        go.send(true).unwrap();
        for a in asks {
            assert_eq!(a.await.unwrap().json().as_ref(), b"{}");
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_tag_the_page_holds_gets_304_and_gzip_when_accepted() {
        let shared = SharedAnswer::new("t", Duration::from_secs(60));
        let json = "[".to_owned() + &"1,".repeat(1000) + "1]";
        let a = shared.current(|| async { built(&json) }).await.unwrap();
        let tag = a.etag().to_str().unwrap().to_owned();
        assert!(tag.starts_with("\"t-") && tag.ends_with('"'), "{tag}");

        let r = a.respond(&headers(&[("if-none-match", &tag)]));
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[header::ETAG], tag.as_str());
        assert!(body_of(r).await.is_empty());
        let r = a.respond(&headers(&[("if-none-match", "\"other\", \"x\"")]));
        assert_eq!(r.status(), StatusCode::OK);

        let r = a.respond(&headers(&[("accept-encoding", "br, gzip")]));
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let gz = body_of(r).await;
        assert!(gz.len() * 10 < json.len(), "{} bytes gzipped", gz.len());
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain)
            .unwrap();
        assert_eq!(plain, json);

        for refuses in ["gzip;q=0", "identity", ""] {
            let r = a.respond(&headers(&[("accept-encoding", refuses)]));
            assert!(
                r.headers().get(header::CONTENT_ENCODING).is_none(),
                "{refuses}"
            );
            assert_eq!(body_of(r).await, json.as_bytes());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_tag_ignores_what_the_build_leaves_out() {
        let shared = SharedAnswer::new("t", Duration::ZERO);
        let with_time = |t: u32| {
            move || async move {
                Ok::<_, ()>(Built {
                    json: format!("{{\"t\":{t},\"hosts\":[]}}").into_bytes(),
                    tag_from: 6,
                })
            }
        };
        let a = shared.current(with_time(1)).await.unwrap();
        let b = shared.current(with_time(2)).await.unwrap();
        assert_ne!(a.json(), b.json());
        assert_eq!(a.etag(), b.etag());
    }
}
