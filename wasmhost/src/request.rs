//! Driving one HTTP stream through the filter: [`RequestBuilder`] sends the
//! request headers; the [`Vm`] methods here send the rest of the stream and
//! end it, and read back what the filter did to it.

use crate::abi::Action;
use crate::error::HostError;
use crate::headers::Headers;
use crate::host::property_path;
use crate::state::{ContextId, ContextKind, LocalReply};
use crate::vm::Vm;

/// A request whose headers the filter has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub id: ContextId,
    /// What `proxy_on_request_headers` returned.
    pub action: Action,
}

/// The response headers after the filter's `proxy_on_response_headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub action: Action,
    pub headers: Headers,
}

/// A request being built; [`RequestBuilder::send_headers`] creates its
/// context and delivers its headers.
#[derive(Debug)]
pub struct RequestBuilder<'vm> {
    vm: &'vm mut Vm,
    headers: Headers,
    properties: Vec<(Vec<u8>, Vec<u8>)>,
    end_of_stream: bool,
}

impl Vm {
    /// Starts a request (headers only and end of stream unless told otherwise).
    pub fn request(&mut self) -> RequestBuilder<'_> {
        RequestBuilder {
            vm: self,
            headers: Headers::new(),
            properties: Vec::new(),
            end_of_stream: true,
        }
    }
}

impl RequestBuilder<'_> {
    /// Adds a request header; the value may be any bytes.
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.headers.add(name, value);
        self
    }

    /// Sets a property of this stream by dotted path, e.g. `"source.address"`.
    pub fn property(mut self, path: &str, value: impl AsRef<[u8]>) -> Self {
        self.properties
            .push((property_path(path), value.as_ref().to_vec()));
        self
    }

    /// Sets a property by its segments, for segments that contain dots.
    pub fn property_segments(mut self, segments: &[&str], value: impl AsRef<[u8]>) -> Self {
        self.properties
            .push((segments.join("\0").into_bytes(), value.as_ref().to_vec()));
        self
    }

    /// Whether the headers end the request (default true: no body).
    pub fn end_of_stream(mut self, end: bool) -> Self {
        self.end_of_stream = end;
        self
    }

    /// Creates the stream's context and calls `proxy_on_request_headers`.
    pub fn send_headers(self) -> Result<Request, HostError> {
        let vm = self.vm;
        let id = vm.new_context_id();
        let root = vm.root;
        vm.create_context(id, ContextKind::Http { root })?;
        let context = vm.context_mut(id)?;
        context.request_headers = self.headers;
        context.properties.extend(self.properties);
        let count = context.request_headers.len() as i32;
        let action = vm.event(
            id,
            "proxy_on_request_headers",
            &[id as i32, count, self.end_of_stream as i32],
        )?;
        Ok(Request {
            id,
            action: Action::from_raw(action.unwrap_or(0)),
        })
    }
}

impl Vm {
    /// Delivers (a chunk of) the request body: `proxy_on_request_body`.
    pub fn request_body(
        &mut self,
        id: ContextId,
        body: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.context_mut(id)?.request_body.extend_from_slice(body);
        let size = self.context(id).map_or(0, |c| c.request_body.len()) as i32;
        let action = self.event(
            id,
            "proxy_on_request_body",
            &[id as i32, size, end_of_stream as i32],
        )?;
        Ok(Action::from_raw(action.unwrap_or(0)))
    }

    /// The upstream's response headers arrive (headers-only response):
    /// `proxy_on_response_headers`; returns them as the filter left them.
    pub fn response_headers(
        &mut self,
        id: ContextId,
        headers: &[(&str, &str)],
    ) -> Result<Response, HostError> {
        let headers = Headers::from_pairs(headers);
        let count = headers.len() as i32;
        self.context_mut(id)?.response_headers = headers;
        let action = self.event(id, "proxy_on_response_headers", &[id as i32, count, 1])?;
        Ok(Response {
            action: Action::from_raw(action.unwrap_or(0)),
            headers: self
                .context(id)
                .map(|c| c.response_headers.clone())
                .unwrap_or_default(),
        })
    }

    /// Whether the filter resumed the request (`proxy_continue_stream`).
    pub fn request_resumed(&self, id: ContextId) -> bool {
        self.context(id).is_some_and(|c| c.request_resumes > 0)
    }

    /// Whether the request goes upstream: its headers returned `Continue`, or
    /// it was resumed, and the filter did not answer it locally.
    pub fn request_forwarded(&self, request: Request) -> bool {
        (request.action == Action::Continue || self.request_resumed(request.id))
            && self.local_reply(request.id).is_none()
    }

    /// The filter's (first) local reply to the request.
    pub fn local_reply(&self, id: ContextId) -> Option<&LocalReply> {
        self.context(id)?.local_replies.first()
    }

    /// The request headers as the filter left them.
    pub fn request_headers(&self, id: ContextId) -> Option<&Headers> {
        self.context(id).map(|c| &c.request_headers)
    }

    /// `proxy_on_done`: the stream ended (or the client went away). Returns
    /// what the module answered (false: it wants to finish later with `proxy_done`).
    pub fn done(&mut self, id: ContextId) -> Result<bool, HostError> {
        self.context_mut(id)?.done = true;
        Ok(self.event(id, "proxy_on_done", &[id as i32])? != Some(0))
    }

    /// `proxy_on_log`.
    pub fn log(&mut self, id: ContextId) -> Result<(), HostError> {
        self.event(id, "proxy_on_log", &[id as i32]).map(drop)
    }

    /// `proxy_on_delete`: the context is gone; the host keeps its record.
    pub fn delete(&mut self, id: ContextId) -> Result<(), HostError> {
        self.context_mut(id)?.deleted = true;
        self.event(id, "proxy_on_delete", &[id as i32]).map(drop)
    }

    /// The stream ends in the module (`proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`) while the host still has the context, live for
    /// `proxy_set_effective_context`: what happens when a client's disconnect
    /// and a callout's answer land in the same event-loop pass. A local reply
    /// sent to it then makes the host call back into a context the SDK has
    /// dropped, which traps, as in Envoy.
    pub fn finish_in_module_only(&mut self, id: ContextId) -> Result<(), HostError> {
        self.event(id, "proxy_on_done", &[id as i32])?;
        self.event(id, "proxy_on_log", &[id as i32])?;
        self.event(id, "proxy_on_delete", &[id as i32]).map(drop)
    }

    /// Ends a stream as Envoy does: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn finish(&mut self, id: ContextId) -> Result<(), HostError> {
        self.done(id)?;
        self.log(id)?;
        self.delete(id)
    }
}
