//! The gRPC API: `PushService` and `AppService`, a thin layer over [`Pushes`] and
//! [`Apps`](crate::apps::Apps), with the same auth as REST (an `authorization` metadata
//! entry `Basic base64(<token>)`).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use pushcast_proto::model::AppConfig;
use pushcast_proto::v1::{
    self, app_service_server::AppService, push_service_server::PushService,
    stream_key_service_server::StreamKeyService,
};
use tonic::{Request, Response, Status};

use crate::auth::Auth;
use crate::publish_keys::PublishKeys;
use crate::pushes::{DestinationRef, DestinationRequest, PushEvent, Pushes, StartPush, UpdatePush};

#[derive(Clone)]
pub struct Api {
    pub pushes: Pushes,
    pub keys: PublishKeys,
}

/// Returns an interceptor that checks the `authorization` metadata.
pub fn auth_interceptor(auth: Auth) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        auth.check(header)?;
        Ok(req)
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn destination_request(d: v1::Destination) -> DestinationRequest {
    DestinationRequest {
        protocol: non_empty(d.protocol),
        url: non_empty(d.url),
        stream_key: non_empty(d.stream_key),
        variant_names: d.variant_names,
    }
}

#[tonic::async_trait]
impl PushService for Api {
    async fn start_push(
        &self,
        req: Request<v1::StartPushRequest>,
    ) -> Result<Response<v1::StartPushResponse>, Status> {
        let r = req.into_inner();
        self.pushes.apps().require(&r.vhost, &r.app).await?;
        let stream = r.stream.unwrap_or_default();
        let input = StartPush {
            id: non_empty(r.id),
            stream_name: non_empty(stream.name),
            track_ids: stream.track_ids,
            variant_names: stream.variant_names,
            protocol: non_empty(r.protocol),
            url: non_empty(r.url),
            stream_key: non_empty(r.stream_key),
            destinations: r
                .destinations
                .into_iter()
                .map(destination_request)
                .collect(),
            reconnect_window_ms: r.reconnect_window_ms,
            rule: None,
        };
        let task = self.pushes.start(&r.vhost, &r.app, input).await?;
        Ok(Response::new(v1::StartPushResponse {
            task: Some(task.to_proto()),
        }))
    }

    async fn update_push(
        &self,
        req: Request<v1::UpdatePushRequest>,
    ) -> Result<Response<v1::UpdatePushResponse>, Status> {
        let r = req.into_inner();
        self.pushes.apps().require(&r.vhost, &r.app).await?;
        let input = UpdatePush {
            id: non_empty(r.id),
            add: r
                .add_destinations
                .into_iter()
                .map(destination_request)
                .collect(),
            remove: r
                .remove_destinations
                .into_iter()
                .map(|d| {
                    if d.url.is_empty() {
                        DestinationRef::Index(d.index as usize)
                    } else {
                        DestinationRef::Address {
                            url: d.url,
                            stream_key: d.stream_key,
                        }
                    }
                })
                .collect(),
            variant_names: r.variant_names.map(|l| l.values),
            track_ids: r.track_ids.map(|l| l.values),
        };
        let task = self.pushes.update(&r.vhost, &r.app, input).await?;
        Ok(Response::new(v1::UpdatePushResponse {
            task: Some(task.to_proto()),
        }))
    }

    async fn stop_push(
        &self,
        req: Request<v1::StopPushRequest>,
    ) -> Result<Response<v1::StopPushResponse>, Status> {
        let r = req.into_inner();
        self.pushes.apps().require(&r.vhost, &r.app).await?;
        let task = self.pushes.stop(&r.vhost, &r.app, Some(&r.id)).await?;
        Ok(Response::new(v1::StopPushResponse {
            task: Some(task.to_proto()),
        }))
    }

    async fn list_pushes(
        &self,
        req: Request<v1::ListPushesRequest>,
    ) -> Result<Response<v1::ListPushesResponse>, Status> {
        let r = req.into_inner();
        self.pushes.apps().require(&r.vhost, &r.app).await?;
        let (tasks, next_page_token) = if r.page_size > 0 && r.id.is_empty() {
            let size = (r.page_size as usize).min(crate::pushes::MAX_PAGE_SIZE);
            self.pushes
                .page(&r.vhost, &r.app, size, &r.page_token)
                .await?
        } else if !r.page_token.is_empty() {
            return Err(
                pushcast_proto::ApiError::bad_request("page_token needs a page_size").into(),
            );
        } else {
            let tasks = self.pushes.list(&r.vhost, &r.app, Some(&r.id)).await?;
            (tasks, String::new())
        };
        Ok(Response::new(v1::ListPushesResponse {
            tasks: tasks.iter().map(|t| t.to_proto()).collect(),
            next_page_token,
        }))
    }

    async fn get_push(
        &self,
        req: Request<v1::GetPushRequest>,
    ) -> Result<Response<v1::GetPushResponse>, Status> {
        let r = req.into_inner();
        self.pushes.apps().require(&r.vhost, &r.app).await?;
        let task = self.pushes.get(&r.vhost, &r.app, &r.id).await?;
        Ok(Response::new(v1::GetPushResponse {
            task: Some(task.to_proto()),
        }))
    }

    type WatchPushesStream = Pin<Box<dyn Stream<Item = Result<v1::PushEvent, Status>> + Send>>;

    async fn watch_pushes(
        &self,
        req: Request<v1::WatchPushesRequest>,
    ) -> Result<Response<Self::WatchPushesStream>, Status> {
        let r = req.into_inner();
        if !r.vhost.is_empty() {
            self.pushes.apps().check_vhost(&r.vhost)?;
            if !r.app.is_empty() {
                self.pushes.apps().require(&r.vhost, &r.app).await?;
            }
        }
        let events = self.pushes.watch(&r.vhost, &r.app).await?;
        let stream = events.map(|ev| {
            let ev = ev?;
            let (kind, task) = match ev {
                PushEvent::Created(t) => (v1::push_event::Kind::Created, t),
                PushEvent::Updated(t) => (v1::push_event::Kind::Updated, t),
                PushEvent::Removed(t) => (v1::push_event::Kind::Removed, t),
            };
            Ok(v1::PushEvent {
                kind: kind as i32,
                task: Some(task.to_proto()),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl AppService for Api {
    async fn create_app(
        &self,
        req: Request<v1::CreateAppRequest>,
    ) -> Result<Response<v1::CreateAppResponse>, Status> {
        let app = req
            .into_inner()
            .app
            .ok_or_else(|| Status::invalid_argument("There is no required parameter [ app]"))?;
        // Continuity and rules go through the REST API's checks, from the same JSON.
        let settings = app_settings_json(&app);
        let continuity = crate::requests::continuity(&settings)?;
        let rules = crate::requests::rules(&settings)?.unwrap_or_default();
        let created = self
            .pushes
            .apps()
            .create(AppConfig {
                open_publish: app.open_publish,
                reconnect_window_ms: continuity.reconnect_window_ms.unwrap_or(0),
                input_stall_ms: continuity.input_stall_ms,
                switch_back_to_primary: continuity.switch_back_to_primary,
                rules,
                ..AppConfig::new(app.vhost, app.name)
            })
            .await?;
        Ok(Response::new(v1::CreateAppResponse {
            app: Some(created.to_proto()),
        }))
    }

    async fn list_apps(
        &self,
        req: Request<v1::ListAppsRequest>,
    ) -> Result<Response<v1::ListAppsResponse>, Status> {
        let names = self.pushes.apps().list(&req.into_inner().vhost).await?;
        Ok(Response::new(v1::ListAppsResponse { names }))
    }

    async fn list_vhosts(
        &self,
        _req: Request<v1::ListVhostsRequest>,
    ) -> Result<Response<v1::ListVhostsResponse>, Status> {
        let vhosts = self.pushes.apps().vhosts().await?;
        Ok(Response::new(v1::ListVhostsResponse {
            vhosts: vhosts.into_iter().map(vhost_proto).collect(),
        }))
    }

    async fn set_vhost_hosts(
        &self,
        req: Request<v1::SetVhostHostsRequest>,
    ) -> Result<Response<v1::SetVhostHostsResponse>, Status> {
        let r = req.into_inner();
        let vhost = self.pushes.apps().set_hosts(&r.name, &r.hosts).await?;
        Ok(Response::new(v1::SetVhostHostsResponse {
            vhost: Some(vhost_proto(vhost)),
        }))
    }

    async fn get_app(
        &self,
        req: Request<v1::GetAppRequest>,
    ) -> Result<Response<v1::GetAppResponse>, Status> {
        let r = req.into_inner();
        let app = self.pushes.apps().require(&r.vhost, &r.name).await?;
        Ok(Response::new(v1::GetAppResponse {
            app: Some(app.to_proto()),
        }))
    }

    async fn delete_app(
        &self,
        req: Request<v1::DeleteAppRequest>,
    ) -> Result<Response<v1::DeleteAppResponse>, Status> {
        let r = req.into_inner();
        self.pushes.apps().delete(&r.vhost, &r.name).await?;
        Ok(Response::new(v1::DeleteAppResponse {}))
    }
}

#[tonic::async_trait]
impl StreamKeyService for Api {
    async fn get_stream_key(
        &self,
        req: Request<v1::GetStreamKeyRequest>,
    ) -> Result<Response<v1::GetStreamKeyResponse>, Status> {
        let r = req.into_inner();
        let issued = self
            .keys
            .get(&r.vhost, &r.app, Some(&r.stream), r.regenerate)
            .await?;
        Ok(Response::new(issued.to_proto()))
    }

    async fn delete_stream_key(
        &self,
        req: Request<v1::DeleteStreamKeyRequest>,
    ) -> Result<Response<v1::DeleteStreamKeyResponse>, Status> {
        let r = req.into_inner();
        self.keys
            .delete(&r.vhost, &r.app, Some(&r.stream), r.disconnect)
            .await?;
        Ok(Response::new(v1::DeleteStreamKeyResponse {}))
    }
}

fn vhost_proto(v: pushcast_proto::vhosts::VhostConfig) -> v1::Vhost {
    v1::Vhost {
        name: v.name,
        hosts: v.hosts,
    }
}

/// A gRPC app's continuity settings and rules in the REST API's JSON shape, so one
/// parser checks both APIs.
fn app_settings_json(app: &v1::App) -> serde_json::Value {
    let rules: Vec<serde_json::Value> = app
        .rules
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "stream": r.stream,
                "destinations": r.destinations.iter().map(|d| serde_json::json!({
                    "protocol": d.protocol, "url": d.url, "streamKey": d.stream_key,
                    "variantNames": d.variant_names,
                })).collect::<Vec<_>>(),
                "trackIds": r.track_ids,
                "variantNames": r.variant_names,
            })
        })
        .collect();
    let mut v = serde_json::json!({ "reconnectWindowMs": app.reconnect_window_ms });
    if let Some(ms) = app.input_stall_ms {
        v["inputStallMs"] = ms.into();
    }
    if let Some(b) = app.switch_back_to_primary {
        v["switchBackToPrimary"] = b.into();
    }
    if !rules.is_empty() {
        v["rules"] = rules.into();
    }
    v
}
