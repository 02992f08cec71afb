//! What generic gRPC tooling sees on both gRPC listeners: the standard
//! health service (`grpc.health.v1.Health`) and server reflection
//! (`grpc.reflection.v1` and `v1alpha`), so load balancers, `grpc_health_probe`
//! and `grpcurl` work without the project's proto file.
//!
//! Health: the overall service ("") and `monitor.v1.Collector` /
//! `monitor.v1.Admin` are SERVING while the store commits, NOT_SERVING
//! while its writes fail (disk full, I/O error) and from the moment the
//! server begins to shut down. On the agents' listener a health check
//! needs no client certificate (the listener accepts connections without
//! one, for enrolment), so a load balancer can probe it.
//!
//! Reflection describes `proto/monitor.proto` (from the descriptor set the
//! build compiled, `monitor::FILE_DESCRIPTOR_SET`) and the health service.
//! It is authenticated like the rest of its listener: on the agents'
//! listener it needs a valid, unrevoked agent certificate (what `Report`
//! needs), on the operator API an operator's (the handshake already
//! requires it); with `--insecure`, nobody needs anything.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::listener::PeerInfo;
use crate::telemetry::Telemetry;
use crate::tls::Trust;

/// The service names health reports on, besides "" (the whole server).
pub const SERVICES: [&str; 2] = ["monitor.v1.Collector", "monitor.v1.Admin"];
/// How often the store's state is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Keeps every service's status current until `stop` turns true; then
/// reports NOT_SERVING (before the listeners drain) and returns.
pub async fn watch(
    reporter: HealthReporter,
    telemetry: Arc<Telemetry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let stopping = *stop.borrow();
        let serving = !stopping && !telemetry.store_failing.load(Ordering::Relaxed);
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in std::iter::once("").chain(SERVICES) {
                reporter.set_service_status(name, status).await;
            }
            if last.is_some() {
                log::warn!(
                    "health: {}",
                    if serving { "SERVING" } else { "NOT_SERVING" }
                );
            }
            last = Some(serving);
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// Who may use reflection on a listener: `None` with `--insecure`.
#[derive(Clone)]
pub struct ReflectionGate {
    pub trust: Option<Arc<Trust>>,
}

impl tonic::service::Interceptor for ReflectionGate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(trust) = &self.trust else {
            return Ok(request);
        };
        let known = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.as_ref())
            .is_some_and(|id| !trust.is_revoked(&id.fingerprint));
        if known {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "reflection needs a client certificate valid on this listener",
            ))
        }
    }
}

/// `routes` plus both reflection services, behind `gate`.
pub fn add_reflection(
    routes: Routes,
    gate: ReflectionGate,
) -> Result<Routes, tonic_reflection::server::Error> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(monitor::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1()?;
    let v1alpha = builder().build_v1alpha()?;
    Ok(routes
        .add_service(InterceptedService::new(v1, gate.clone()))
        .add_service(InterceptedService::new(v1alpha, gate)))
}
