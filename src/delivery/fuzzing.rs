//! The worker's filter and render steps for the fuzz targets in `fuzz/`,
//! without a store, a clock or the network.
//!
//! Compiled only with `--cfg fuzzing` (which `cargo fuzz` sets) and for unit
//! tests, so it adds nothing to the shipped library.

use super::render::Renderer;
use super::template::CompileError;
use crate::config::SubscriptionConfig;
use crate::store::StoredEvent;

/// A rendered request: body bytes and the rendered header values.
pub type Request = (Vec<u8>, Vec<(String, String)>);

/// What the filter and the renderer made of some events.
#[derive(Debug)]
pub struct Outcome {
    /// The filter's verdict on each event (an evaluation error as text).
    pub matches: Vec<Result<bool, String>>,
    /// The request for all the events: body bytes and rendered header
    /// values, or why it could not be rendered.
    pub request: Result<Request, String>,
}

/// Compiles `sub`'s filter and templates as its worker would, evaluates the
/// filter on each event and renders one request of all of them.
pub fn filter_and_render(
    sub: &SubscriptionConfig,
    events: &[StoredEvent],
) -> Result<Outcome, CompileError> {
    let renderer = Renderer::new(sub)?;
    let matches = events
        .iter()
        .map(|event| renderer.matches(event).map_err(|err| err.to_string()))
        .collect();
    let request = renderer
        .render(events)
        .map(|rendered| {
            let headers = rendered
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect();
            (rendered.body.to_vec(), headers)
        })
        .map_err(|err| err.to_string());
    Ok(Outcome { matches, request })
}
