//! Answering the module's HTTP callouts: a response, a reset, a timeout.

use crate::error::HostError;
use crate::headers::Headers;
use crate::state::{CallAnswer, HttpCall};
use crate::vm::Vm;

/// What `proxy_get_status` reports for a reset callout (gRPC `UNAVAILABLE`, as Envoy).
const RESET_STATUS: u32 = 14;

impl Vm {
    /// Every callout the module dispatched, in order.
    pub fn calls(&self) -> &[HttpCall] {
        &self.store.data().calls
    }

    /// The callouts not answered yet.
    pub fn pending_calls(&self) -> Vec<HttpCall> {
        self.calls()
            .iter()
            .filter(|c| !c.answered)
            .cloned()
            .collect()
    }

    /// Answers callout `token`: `proxy_on_http_call_response` on the context
    /// that dispatched it, whether or not that context still exists.
    pub fn respond_to_call(
        &mut self,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        self.answer(
            token,
            CallAnswer {
                headers: Headers::from_pairs(headers),
                body: body.to_vec(),
                ..CallAnswer::default()
            },
        )
    }

    /// The callout's upstream reset after sending nothing usable: the module
    /// gets zero headers (and `proxy_get_status` says why), as in Envoy.
    pub fn reset_call(&mut self, token: u32) -> Result<(), HostError> {
        self.answer(
            token,
            CallAnswer {
                status: (RESET_STATUS, b"reset".to_vec()),
                ..CallAnswer::default()
            },
        )
    }

    /// The callout's timeout fired: Envoy answers it `504` itself.
    pub fn time_out_call(&mut self, token: u32) -> Result<(), HostError> {
        self.respond_to_call(
            token,
            &[(":status", "504"), ("content-type", "text/plain")],
            b"upstream request timeout",
        )
    }

    fn answer(&mut self, token: u32, answer: CallAnswer) -> Result<(), HostError> {
        let call = self
            .store
            .data_mut()
            .calls
            .iter_mut()
            .find(|c| c.token == token)
            .ok_or_else(|| HostError::Usage(format!("no callout with token {token}")))?;
        if call.answered {
            return Err(HostError::Usage(format!(
                "callout {token} was already answered"
            )));
        }
        call.answered = true;
        let context = call.context_id;
        let args = [
            context as i32,
            token as i32,
            answer.headers.len() as i32,
            answer.body.len() as i32,
            answer.trailers.len() as i32,
        ];
        self.store.data_mut().answer = Some(answer);
        let result = self.call(context, "proxy_on_http_call_response", &args);
        self.store.data_mut().answer = None;
        result?;
        self.settle()
    }
}
