//! The HTTP side of `[metrics] listen`: one scrape per connection, its text asked of the
//! agent's main loop (which alone reads the maps) while the connection waits.

use std::{future::Future, time::Duration};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

/// The next scrape's connection; never, without a listener.
pub async fn accept(listener: Option<&TcpListener>) -> std::io::Result<TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// A Prometheus scrape: `GET /metrics` over HTTP/1.x, one request per connection, answered
/// with what `scrape` renders; anything else is 404.
pub async fn answer<S, F>(stream: TcpStream, scrape: S)
where
    S: Fn() -> F + Clone + Send + 'static,
    F: Future<Output = String> + Send,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        let scrape = scrape.clone();
        async move {
            let wanted =
                request.method() == hyper::Method::GET && request.uri().path() == "/metrics";
            if wanted {
                let body = scrape().await;
                hyper::Response::builder()
                    .header(hyper::header::CONTENT_TYPE, super::CONTENT_TYPE)
                    .body(Full::new(Bytes::from(body)))
            } else {
                hyper::Response::builder()
                    .status(hyper::StatusCode::NOT_FOUND)
                    .body(Full::default())
            }
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(err) = connection.await {
        tracing::debug!("metrics connection: {err}");
    }
}
