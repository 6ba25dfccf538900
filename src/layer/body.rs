//! The response body of [`ClinkService`](super::ClinkService): the inner
//! service's body, or one the layer wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response from [`ClinkService`](super::ClinkService):
    /// either the inner service's body or a small JSON body the layer wrote.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[derive(Debug)]
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Layer { body: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn layer(body: Bytes) -> Self {
        Self {
            kind: Kind::Layer {
                body: (!body.is_empty()).then_some(body),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>, cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Layer { body } => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Layer { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Layer { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.remaining() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};

    /// A body the layer wrote ends once its one frame is taken, and an
    /// empty one has ended from the start (so hyper sends no chunked
    /// framing for it); the inner service's body says what it says.
    #[tokio::test]
    async fn the_end_of_the_stream_is_reported_as_it_is() {
        let mut written = ResponseBody::<Empty<Bytes>>::layer(Bytes::from_static(b"{}"));
        assert!(!written.is_end_stream());
        assert_eq!(written.size_hint().exact(), Some(2));
        let frame = written.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"{}"));
        assert!(written.is_end_stream());
        assert_eq!(written.size_hint().exact(), Some(0));
        assert!(written.frame().await.is_none());

        assert!(ResponseBody::<Empty<Bytes>>::layer(Bytes::new()).is_end_stream());
        assert!(ResponseBody::inner(Empty::<Bytes>::new()).is_end_stream());
        let inner = ResponseBody::inner(Full::new(Bytes::from_static(b"ok")));
        assert!(!inner.is_end_stream());
        assert_eq!(inner.size_hint().exact(), Some(2));
    }
}
