//! The wasmtime host: one engine per node, compiled components cached on
//! disk, instances kept between calls, every call bounded.

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use eddy_client::protocol::{ErrorCode, PluginInfo};
use log::{info, warn};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    Component, HasSelf, Linker, LinkerInstance, ResourceTable, ResourceType,
};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Strategy, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::records::{self, Flat};
use super::registry::{self, Disabled, Entry, Layout, RegistryFile};
use super::stats::Stats;
use super::wasi::Grants;
use super::{EPOCH_TICK_MS, Intercepted, Partitioned, PluginKind, Rejection, RetentionInput};
use crate::broker::{BrokerError, now_ms};
use crate::config::{PluginEngine, PluginsConfig};

/// Bindings generated from `wit/` (`eddy:plugin@0.2.0`). Parameters are
/// borrowed, so a call passes the host's slices without copying them first.
pub mod bindings {
    /// The `interceptor` world; its `host` is shared by all, its `types`
    /// with the partitioner.
    pub mod interceptor {
        wasmtime::component::bindgen!({
            world: "interceptor",
            path: "../wit",
            ownership: Borrowing {
                duplicate_if_necessary: false
            },
        });
    }
    /// The `partitioner` world.
    pub mod partitioner {
        wasmtime::component::bindgen!({
            world: "partitioner",
            path: "../wit",
            ownership: Borrowing {
                duplicate_if_necessary: false
            },
            with: {
                "eddy:plugin/types": super::interceptor::eddy::plugin::types,
                "eddy:plugin/host": super::interceptor::eddy::plugin::host,
            },
        });
    }
    /// The `retention` world.
    pub mod retention {
        wasmtime::component::bindgen!({
            world: "retention",
            path: "../wit",
            ownership: Borrowing {
                duplicate_if_necessary: false
            },
            with: {
                "eddy:plugin/host": super::interceptor::eddy::plugin::host,
            },
        });
    }
    pub use interceptor::eddy::plugin::{host, types, verdict_types};
    pub use retention::eddy::plugin::retention_types;
}

use bindings::retention_types::{PartitionState, Segment};
use bindings::verdict_types::{Field, HeaderEdit, Verdict, Verdicts};
use eddy_core::batch::{BatchBuilder, BatchOptions, Compression};

/// Longest log line a plugin may write (longer ones are cut).
const PLUGIN_LOG_BYTES_MAX: usize = 4096;
/// Most fields on one plugin log line.
const PLUGIN_LOG_FIELDS_MAX: usize = 32;
/// Most table elements one instance may have.
const PLUGIN_TABLE_ELEMENTS_MAX: usize = 1_000_000;
/// Longest error text kept from a failed call.
const FAILURE_TEXT_BYTES_MAX: usize = 600;
/// Rejection reasons quoted in a produce error.
const REJECTIONS_QUOTED_MAX: usize = 3;

/// What a plugin's store holds: its limits, what the `host` interface
/// gives it, and its WASI context (only what its config grants).
pub struct HostState {
    limits: StoreLimits,
    plugin: Arc<str>,
    config: Arc<Vec<(String, String)>>,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::types::Host for HostState {}
impl bindings::verdict_types::Host for HostState {}
impl bindings::retention_types::Host for HostState {}

impl bindings::host::Host for HostState {
    fn log(
        &mut self,
        level: bindings::host::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        use bindings::host::Level as L;
        let level = match level {
            L::Error => log::Level::Error,
            L::Warn => log::Level::Warn,
            L::Info => log::Level::Info,
            L::Debug => log::Level::Debug,
            L::Trace => log::Level::Trace,
        };
        let mut message = message;
        truncate(&mut message, PLUGIN_LOG_BYTES_MAX);
        let fields: Vec<String> = fields
            .iter()
            .take(PLUGIN_LOG_FIELDS_MAX)
            .map(|(k, v)| {
                let mut field = format!("{k}={v:?}");
                truncate(&mut field, PLUGIN_LOG_BYTES_MAX);
                field
            })
            .collect();
        log::log!(target: "eddy::plugin", level, "plugin {}: {message} {}", self.plugin, fields.join(" "));
    }

    fn now_ms(&mut self) -> i64 {
        now_ms()
    }

    fn config(&mut self) -> Vec<(String, String)> {
        self.config.as_ref().clone()
    }

    fn config_value(&mut self, key: String) -> Option<String> {
        self.config
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

enum Pre {
    Interceptor(bindings::interceptor::InterceptorPre<HostState>),
    Partitioner(bindings::partitioner::PartitionerPre<HostState>),
    Retention(bindings::retention::RetentionPre<HostState>),
}

enum Bound {
    Interceptor(bindings::interceptor::Interceptor),
    Partitioner(bindings::partitioner::Partitioner),
    Retention(bindings::retention::Retention),
}

/// A live instance with its store.
struct Inst {
    store: Store<HostState>,
    bound: Bound,
}

/// One installed plugin version: its code, its instances and its counters.
/// Replacing a plugin installs a new `Slot`; calls in flight finish on the
/// old one.
struct Slot {
    name: Arc<str>,
    entry: Entry,
    config: Arc<Vec<(String, String)>>,
    /// What of the host it may reach (WASI).
    grants: Arc<Grants>,
    /// The instantiable code, or why it could not be loaded.
    pre: Result<Pre, String>,
    idle: Mutex<Vec<Inst>>,
    permits: smol::lock::Semaphore,
    stats: Stats,
    disabled: Mutex<Option<String>>,
}

/// Why a call did not produce an answer.
enum CallError {
    /// Disabled or not loaded: the caller falls back to built-in behaviour.
    Unavailable(String),
    /// The call failed (counted against the plugin).
    Failed(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Increments the engine's epoch every [`EPOCH_TICK_MS`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> std::io::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("eddy-plugin-epoch".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    engine.increment_epoch();
                }
            })?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The node's plugin host.
pub struct PluginHost {
    engine: Engine,
    engine_key: String,
    config: PluginsConfig,
    layout: Layout,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// Serializes registry changes.
    admin: smol::lock::Mutex<()>,
    /// Held while the registry file is read, changed and written (admin
    /// requests, and a call that disables its plugin).
    registry_file: Arc<Mutex<()>>,
    _ticker: Ticker,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("dir", &self.layout.root)
            .finish_non_exhaustive()
    }
}

/// The wasmtime configuration for `config`.
fn engine_for(config: &PluginsConfig) -> Result<Engine, String> {
    let mut c = Config::new();
    c.epoch_interruption(true);
    if config.fuel_per_call > 0 {
        c.consume_fuel(true);
    }
    match config.engine {
        PluginEngine::Auto => {}
        PluginEngine::Cranelift => {
            c.strategy(Strategy::Cranelift);
        }
        PluginEngine::Pulley => {
            let target = if cfg!(target_pointer_width = "64") {
                "pulley64"
            } else {
                "pulley32"
            };
            let target = if cfg!(target_endian = "big") {
                format!("{target}be")
            } else {
                target.to_owned()
            };
            c.target(&target)
                .map_err(|e| format!("plugins.engine = \"pulley\": {e}"))?;
        }
    }
    if config.memory_reservation_mb > 0 {
        let reservation = u64::from(config.memory_reservation_mb) << 20;
        c.memory_reservation(reservation);
        c.memory_reservation_for_growth(reservation.min(1 << 20));
    }
    if config.memory_guard_kb > 0 {
        c.memory_guard_size(u64::from(config.memory_guard_kb) << 10);
    }
    Engine::new(&c).map_err(|e| {
        format!(
            "cannot start the plugin engine ({:?}): {e}; try [plugins] engine = \"pulley\"",
            config.engine
        )
    })
}

/// The world a component implements, from its exports.
fn kind_of(engine: &Engine, component: &Component) -> Result<PluginKind, String> {
    let ty = component.component_type();
    let mut kinds = Vec::new();
    let mut names = Vec::new();
    for (name, _) in ty.exports(engine) {
        names.push(name.to_owned());
        match name {
            "intercept" => kinds.push(PluginKind::Interceptor),
            "partition" => kinds.push(PluginKind::Partitioner),
            "segments-to-delete" => kinds.push(PluginKind::Retention),
            _ => {}
        }
    }
    match kinds.as_slice() {
        [kind] => Ok(*kind),
        _ => Err(format!(
            "the component exports {names:?}; a plugin implements exactly one world of \
             eddy:plugin@0.2.0 (partitioner, interceptor or retention): build it with \
             eddy-plugin-sdk and one of its features"
        )),
    }
}

impl PluginHost {
    /// Starts the engine and loads every installed plugin (from the compiled
    /// cache when it is there). A plugin that fails to load is listed as
    /// failed and its topics use the built-in behaviour; only a broken
    /// engine or registry stops the node.
    pub fn open(config: &PluginsConfig, data_dir: &Path) -> Result<Arc<PluginHost>, String> {
        let engine = engine_for(config)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());
        let layout = Layout::new(data_dir);
        layout
            .create_dirs()
            .map_err(|e| format!("cannot create {}: {e}", layout.root.display()))?;
        let file = layout.load()?;
        let ticker = Ticker::start(engine.clone())
            .map_err(|e| format!("cannot start the plugin epoch thread: {e}"))?;
        let host = PluginHost {
            engine,
            engine_key,
            config: config.clone(),
            layout,
            slots: RwLock::new(BTreeMap::new()),
            admin: smol::lock::Mutex::new(()),
            registry_file: Arc::new(Mutex::new(())),
            _ticker: ticker,
        };
        let mut slots = BTreeMap::new();
        for (name, entry) in file.plugins {
            let started = Instant::now();
            let slot = host.load(&name, entry);
            match &slot.pre {
                Ok(_) if let Some(d) = &slot.entry.disabled => warn!(
                    "plugin {name}: {} loaded but DISABLED since {} ms ({}); topics using it \
                     fall back to the built-in behaviour; run `eddy plugin enable {name}` \
                     to enable it again",
                    slot.entry.kind.name(),
                    d.since_ms,
                    d.reason
                ),
                Ok(_) => info!(
                    "plugin {name}: {} loaded in {} ms",
                    slot.entry.kind.name(),
                    started.elapsed().as_millis()
                ),
                Err(e) => {
                    warn!("plugin {name}: cannot load: {e}; its topics use the built-in behaviour")
                }
            }
            slots.insert(name, Arc::new(slot));
        }
        *host.slots.write().unwrap_or_else(|p| p.into_inner()) = slots;
        Ok(Arc::new(host))
    }

    /// A compiled component: from the cache, or compiled and cached.
    fn component(&self, sha256: &str, wasm: &[u8]) -> Result<Component, String> {
        let cached = self
            .layout
            .cache_dir()
            .join(format!("{sha256}-{}.cwasm", self.engine_key));
        if cached.is_file() {
            // SAFETY: this node wrote the file into its own data directory
            // (temp file, fsync, rename) from a component it compiled with an
            // engine of the same configuration (the name has the engine's
            // compatibility hash); wasmtime checks the header too.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    warn!("{}: unusable ({e}); compiling again", cached.display());
                    let _ = std::fs::remove_file(&cached);
                }
            }
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| format!("not a valid WebAssembly component: {}", error_text(&e)))?;
        match component.serialize() {
            Ok(bytes) => {
                if let Err(e) = registry::write_durably(&cached, &bytes) {
                    warn!(
                        "cannot cache compiled plugin code in {}: {e}",
                        cached.display()
                    );
                }
            }
            Err(e) => warn!("cannot serialize compiled plugin code: {e}"),
        }
        Ok(component)
    }

    /// Compiles and links a component for `kind`.
    fn prepare(&self, component: &Component, kind: PluginKind) -> Result<Pre, String> {
        let mut linker = Linker::<HostState>::new(&self.engine);
        let linked = match kind {
            PluginKind::Interceptor => bindings::interceptor::Interceptor::add_to_linker::<
                HostState,
                HasSelf<HostState>,
            >(&mut linker, |s| s),
            PluginKind::Partitioner => bindings::partitioner::Partitioner::add_to_linker::<
                HostState,
                HasSelf<HostState>,
            >(&mut linker, |s| s),
            PluginKind::Retention => bindings::retention::Retention::add_to_linker::<
                HostState,
                HasSelf<HostState>,
            >(&mut linker, |s| s),
        };
        linked.map_err(|e| format!("cannot link the host interface: {}", error_text(&e)))?;
        // WASI 0.2 (synchronous bindings): each store's context holds only
        // what the plugin's config grants (see `wasi`), so an ungranted
        // file, variable or socket is an error inside the plugin.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| format!("cannot link WASI: {}", error_text(&e)))?;
        // Whatever else the component imports traps when called.
        self.stub_unprovided_imports(&mut linker, component)
            .map_err(|e| format!("cannot link the component: {}", error_text(&e)))?;
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| format!("cannot link the component: {}", error_text(&e)))?;
        let wrong = |e: wasmtime::Error| {
            format!(
                "the component does not match the {} world of eddy:plugin@0.2.0: {}",
                kind.name(),
                error_text(&e)
            )
        };
        Ok(match kind {
            PluginKind::Interceptor => {
                Pre::Interceptor(bindings::interceptor::InterceptorPre::new(pre).map_err(wrong)?)
            }
            PluginKind::Partitioner => {
                Pre::Partitioner(bindings::partitioner::PartitionerPre::new(pre).map_err(wrong)?)
            }
            PluginKind::Retention => {
                Pre::Retention(bindings::retention::RetentionPre::new(pre).map_err(wrong)?)
            }
        })
    }

    /// Defines every import of `component` that neither the `eddy:plugin`
    /// worlds nor WASI 0.2 provide as a function that traps when called, so
    /// a component that imports more than it uses still loads.
    /// (`Linker::define_unknown_imports_as_traps` would also stub WASI
    /// interfaces imported at another 0.2.x version than wasmtime-wasi
    /// defines, shadowing their semver-compatible definitions.)
    fn stub_unprovided_imports(
        &self,
        linker: &mut Linker<HostState>,
        component: &Component,
    ) -> wasmtime::Result<()> {
        fn stub(
            engine: &Engine,
            linker: &mut LinkerInstance<'_, HostState>,
            name: &str,
            path: &str,
            item: ComponentItem,
        ) -> wasmtime::Result<()> {
            match item {
                ComponentItem::ComponentFunc(_) => {
                    let path = path.to_owned();
                    linker.func_new(name, move |_, _, _, _| {
                        wasmtime::bail!("unknown import: `{path}` has not been defined")
                    })
                }
                ComponentItem::ComponentInstance(instance) => {
                    let mut inner = linker.instance(name)?;
                    for (export, item) in instance.exports(engine) {
                        stub(
                            engine,
                            &mut inner,
                            export,
                            &format!("{path}#{export}"),
                            item.ty,
                        )?;
                    }
                    Ok(())
                }
                ComponentItem::Resource(_) => {
                    linker.resource(name, ResourceType::host::<()>(), |_, _| Ok(()))
                }
                ComponentItem::Type(_) => Ok(()),
                ComponentItem::CoreFunc(_)
                | ComponentItem::Module(_)
                | ComponentItem::Component(_) => {
                    wasmtime::bail!("import `{path}` is not a function, instance or type")
                }
            }
        }
        let ty = component.component_type();
        let mut root = linker.root();
        for (name, item) in ty.imports(&self.engine) {
            if !super::wasi::is_provided(name) {
                stub(&self.engine, &mut root, name, name, item.ty)?;
            }
        }
        Ok(())
    }

    fn new_slot(&self, name: &str, entry: Entry, grants: Grants, pre: Result<Pre, String>) -> Slot {
        Slot {
            name: Arc::from(name),
            config: Arc::new(entry.config.clone()),
            grants: Arc::new(grants),
            disabled: Mutex::new(entry.disabled.as_ref().map(|d| d.reason.clone())),
            entry,
            pre,
            idle: Mutex::new(Vec::new()),
            permits: smol::lock::Semaphore::new(self.config.instances_per_plugin as usize),
            stats: Stats::new(),
        }
    }

    /// Loads an installed plugin from its stored component. Its grants are
    /// checked again: a granted directory that is gone leaves the plugin
    /// listed as failed.
    fn load(&self, name: &str, entry: Entry) -> Slot {
        let (grants, pre) = match Grants::from_config(&entry.config) {
            Ok(grants) => {
                let pre = std::fs::read(self.layout.wasm(&entry.sha256))
                    .map_err(|e| {
                        format!(
                            "cannot read {}: {e}",
                            self.layout.wasm(&entry.sha256).display()
                        )
                    })
                    .and_then(|wasm| self.component(&entry.sha256, &wasm))
                    .and_then(|c| self.prepare(&c, entry.kind));
                (grants, pre)
            }
            Err(e) => (Grants::default(), Err(format!("bad grant: {e}"))),
        };
        self.new_slot(name, entry, grants, pre)
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Installs or replaces plugin `name`: checks and compiles the component
    /// (on a blocking thread), stores it, persists the registry, then swaps
    /// it in. Returns its kind, whether it replaced one, and its hash.
    pub async fn add(
        self: &Arc<Self>,
        name: &str,
        wasm: Vec<u8>,
        config: Vec<(String, String)>,
        required: Option<PluginKind>,
    ) -> Result<(PluginKind, bool, String), BrokerError> {
        if !eddy_core::config::is_valid_plugin_name(name) {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "plugin name {name:?} is not valid: use 1 to {} letters, digits, '.', '_' or '-'",
                    eddy_core::config::PLUGIN_NAME_BYTES_MAX
                ),
            ));
        }
        let _admin = self.admin.lock().await;
        let exists = self.slot(name).is_some();
        let count = self.slots.read().unwrap_or_else(|p| p.into_inner()).len();
        if !exists && count >= registry::PLUGINS_MAX {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "this node already holds {} plugins (the most it takes); remove one first",
                    registry::PLUGINS_MAX
                ),
            ));
        }
        let host = self.clone();
        let name_owned = name.to_owned();
        let slot = smol::unblock(move || -> Result<Slot, BrokerError> {
            let bad = |m: String| BrokerError::new(ErrorCode::InvalidRequest, m);
            let storage = |m: String| BrokerError::new(ErrorCode::KafkaStorageError, m);
            let grants = Grants::from_config(&config)
                .map_err(|e| bad(format!("plugin {name_owned}: {e}; nothing was installed")))?;
            if !grants.is_empty() && !host.config.allow_wasi_grants {
                return Err(BrokerError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "plugin {name_owned} asks for wasi.* grants, and this node gives \
                         plugins no host directories, environment or network; nothing was \
                         installed. The operator allows grants with `[plugins] \
                         allow-wasi-grants = true` (or --plugin-allow-wasi-grants true) on \
                         the node"
                    ),
                ));
            }
            let sha256 = registry::sha256_hex(&wasm);
            let component = host.component(&sha256, &wasm).map_err(bad)?;
            let kind = kind_of(&host.engine, &component).map_err(bad)?;
            if let Some(required) = required
                && required != kind
            {
                return Err(bad(format!(
                    "plugin {name_owned} is a {} used by topics; the new component is a {}: \
                     install it under another name",
                    required.name(),
                    kind.name()
                )));
            }
            let pre = host.prepare(&component, kind).map_err(bad)?;
            let entry = Entry {
                kind,
                sha256: sha256.clone(),
                wasm_bytes: wasm.len() as u64,
                config,
                added_ms: now_ms(),
                disabled: None,
            };
            // Instantiate once now, so a component that cannot even start is
            // refused here rather than failing every produce later.
            let slot = host.new_slot(&name_owned, entry.clone(), grants, Ok(pre));
            let inst = host
                .instantiate(&slot)
                .map_err(|e| bad(format!("the plugin cannot start: {}", host.describe(&e))))?;
            lock(&slot.idle).push(inst);
            host.layout
                .store_wasm(&sha256, &wasm)
                .map_err(|e| storage(format!("cannot store the component: {e}; check the disk")))?;
            let file = edit_registry(&host.layout, &host.registry_file, |file| {
                file.version = 1;
                file.plugins.insert(name_owned, entry);
                Ok(true)
            })?;
            host.layout.remove_unused(&file);
            Ok(slot)
        })
        .await?;
        let kind = slot.entry.kind;
        let sha256 = slot.entry.sha256.clone();
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::new(slot));
        info!(
            "plugin {name}: {} {} ({sha256})",
            kind.name(),
            if exists { "replaced" } else { "installed" }
        );
        Ok((kind, exists, sha256))
    }

    /// Uninstalls plugin `name`. The broker has checked that no topic names it.
    pub async fn remove(&self, name: &str) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        if self.slot(name).is_none() {
            return Err(not_found(name));
        }
        let layout = self.layout.clone();
        let registry_file = self.registry_file.clone();
        let name_owned = name.to_owned();
        smol::unblock(move || -> Result<(), BrokerError> {
            let file = edit_registry(&layout, &registry_file, |file| {
                file.plugins.remove(&name_owned);
                Ok(true)
            })?;
            layout.remove_unused(&file);
            Ok(())
        })
        .await?;
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        info!("plugin {name}: removed");
        Ok(())
    }

    /// Records in the registry that `slot` was disabled, so it stays
    /// disabled across restarts; nothing is written when the plugin was
    /// replaced or removed meanwhile. Runs on the calling (blocking) thread.
    fn persist_disabled(&self, slot: &Slot, reason: String) {
        let saved = edit_registry(&self.layout, &self.registry_file, |file| {
            Ok(match file.plugins.get_mut(&*slot.name) {
                Some(entry) if entry.same_version(&slot.entry) => {
                    entry.disabled = Some(Disabled {
                        reason,
                        since_ms: now_ms(),
                    });
                    true
                }
                _ => false,
            })
        });
        if let Err(e) = saved {
            warn!(
                "plugin {}: disabled, but {}; it is enabled again if the node restarts",
                slot.name, e.message
            );
        }
    }

    /// Enables plugin `name` again after it was disabled: reloads it from
    /// its stored component (checking its grants again), starts one
    /// instance, clears the disabled mark in the registry and swaps it in
    /// with fresh statistics. Returns the reason it had been disabled
    /// (`None` if it was enabled already: nothing changes then).
    pub async fn enable(self: &Arc<Self>, name: &str) -> Result<Option<String>, BrokerError> {
        let _admin = self.admin.lock().await;
        let Some(old) = self.slot(name) else {
            return Err(not_found(name));
        };
        let was = lock(&old.disabled).clone();
        if was.is_none() && old.pre.is_ok() && old.entry.disabled.is_none() {
            return Ok(None);
        }
        let host = self.clone();
        let name_owned = name.to_owned();
        let slot = smol::unblock(move || -> Result<Slot, BrokerError> {
            let mut entry = old.entry.clone();
            entry.disabled = None;
            let slot = host.load(&name_owned, entry);
            if let Err(e) = &slot.pre {
                return Err(BrokerError::new(
                    ErrorCode::PluginNotFound,
                    format!(
                        "plugin {name_owned} cannot be loaded: {e}; fix that, or install it \
                         again with `eddy plugin add {name_owned} --wasm FILE`"
                    ),
                ));
            }
            let inst = host.instantiate(&slot).map_err(|e| {
                BrokerError::new(
                    ErrorCode::PluginFailed,
                    format!(
                        "plugin {name_owned} cannot start: {}; it stays disabled",
                        host.describe(&e)
                    ),
                )
            })?;
            lock(&slot.idle).push(inst);
            edit_registry(&host.layout, &host.registry_file, |file| {
                match file.plugins.get_mut(&name_owned) {
                    Some(stored) if stored.same_version(&old.entry) => {
                        stored.disabled = None;
                        Ok(true)
                    }
                    _ => Err(BrokerError::new(
                        ErrorCode::PluginNotFound,
                        format!("plugin {name_owned} changed meanwhile; see `eddy plugin list`"),
                    )),
                }
            })?;
            Ok(slot)
        })
        .await?;
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::new(slot));
        let was = was.unwrap_or_else(|| "it had failed to load".to_owned());
        info!("plugin {name}: enabled again (it was disabled: {was})");
        Ok(Some(was))
    }

    /// Every plugin with its status and statistics.
    pub fn list(&self, topics_using: impl Fn(&str) -> Vec<String>) -> Vec<PluginInfo> {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .map(|s| {
                let snap = s.stats.snapshot();
                let status = match (&s.pre, lock(&s.disabled).as_ref()) {
                    (Err(e), _) => format!("failed: {e}"),
                    (Ok(_), Some(why)) => format!("disabled: {why}"),
                    (Ok(_), None) => "enabled".to_owned(),
                };
                PluginInfo {
                    name: s.name.to_string(),
                    kind: s.entry.kind.name().to_owned(),
                    status,
                    sha256: s.entry.sha256.clone(),
                    wasm_bytes: s.entry.wasm_bytes,
                    config: s.entry.config.clone(),
                    topics: topics_using(&s.name),
                    calls: snap.calls,
                    failures: snap.failures,
                    failures_in_a_row: snap.in_a_row,
                    mean_ns: snap.mean_ns,
                    p99_ns: snap.p99_ns,
                    records: snap.records,
                }
            })
            .collect()
    }

    /// The kind of installed plugin `name`.
    pub fn kind(&self, name: &str) -> Option<PluginKind> {
        self.slot(name).map(|s| s.entry.kind)
    }

    /// Whether `name` is installed and implements `kind` (for topic configs).
    pub fn check(&self, name: &str, kind: PluginKind) -> Result<(), String> {
        match self.slot(name) {
            None => Err(format!(
                "no plugin named {name:?} is installed; add it first with \
                 `eddy plugin add {name} --wasm FILE`"
            )),
            Some(s) if s.entry.kind != kind => Err(format!(
                "plugin {name:?} is a {}, not a {}",
                s.entry.kind.name(),
                kind.name()
            )),
            Some(_) => Ok(()),
        }
    }

    /// A fresh instance with its own store and limits.
    fn instantiate(&self, slot: &Slot) -> wasmtime::Result<Inst> {
        let limits = StoreLimitsBuilder::new()
            .memory_size((self.config.memory_limit_mb as usize).saturating_mul(1 << 20))
            .table_elements(PLUGIN_TABLE_ELEMENTS_MAX)
            .trap_on_grow_failure(true)
            .build();
        let wasi = slot
            .grants
            .context()
            .map_err(|e| wasmtime::format_err!("{e}"))?;
        let mut store = Store::new(
            &self.engine,
            HostState {
                limits,
                plugin: slot.name.clone(),
                config: slot.config.clone(),
                wasi,
                table: ResourceTable::new(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        self.arm(&mut store)?;
        let pre = slot
            .pre
            .as_ref()
            .map_err(|e| wasmtime::format_err!("{e}"))?;
        let bound = match pre {
            Pre::Interceptor(p) => Bound::Interceptor(p.instantiate(&mut store)?),
            Pre::Partitioner(p) => Bound::Partitioner(p.instantiate(&mut store)?),
            Pre::Retention(p) => Bound::Retention(p.instantiate(&mut store)?),
        };
        Ok(Inst { store, bound })
    }

    /// Sets the CPU bounds for the next call.
    fn arm(&self, store: &mut Store<HostState>) -> wasmtime::Result<()> {
        let ticks = self.config.call_timeout_ms.div_ceil(EPOCH_TICK_MS).max(1);
        store.set_epoch_deadline(ticks);
        if self.config.fuel_per_call > 0 {
            store.set_fuel(self.config.fuel_per_call)?;
        }
        Ok(())
    }

    /// What went wrong in a call, in words an operator can act on.
    fn describe(&self, e: &wasmtime::Error) -> String {
        if let Some(trap) = e.downcast_ref::<Trap>() {
            match trap {
                Trap::Interrupt => {
                    return format!(
                        "ran longer than call-timeout-ms ({} ms) and was stopped",
                        self.config.call_timeout_ms
                    );
                }
                Trap::OutOfFuel => {
                    return format!(
                        "used up its fuel-per-call ({}) and was stopped",
                        self.config.fuel_per_call
                    );
                }
                _ => {}
            }
        }
        let all = chain_text(e);
        let text = error_text(e);
        if all.contains("all fuel consumed") {
            return format!(
                "used up its fuel-per-call ({}) and was stopped",
                self.config.fuel_per_call
            );
        }
        if all.contains("interrupt") {
            return format!(
                "ran longer than call-timeout-ms ({} ms) and was stopped",
                self.config.call_timeout_ms
            );
        }
        if all.contains("growing memory") || all.contains("memory.grow") {
            return format!(
                "needed more than memory-limit-mb ({} MiB) and was stopped",
                self.config.memory_limit_mb
            );
        }
        let hint = if all.contains("unknown import") || all.contains("has not been defined") {
            " (it called an import the node does not provide; plugins get WASI 0.2 only, and \
             no file system, network or environment unless their config grants it with \
             wasi.dirs, wasi.network or wasi.env)"
        } else {
            ""
        };
        format!("trapped: {text}{hint}")
    }

    /// Runs `f` on an instance of `slot`, bounded, and accounts for it.
    fn call<R>(
        &self,
        slot: &Slot,
        records: u64,
        f: impl FnOnce(&mut Inst) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, CallError> {
        if let Err(e) = &slot.pre {
            return Err(CallError::Unavailable(format!("not loaded: {e}")));
        }
        if let Some(why) = lock(&slot.disabled).as_ref() {
            return Err(CallError::Unavailable(format!("disabled: {why}")));
        }
        let _permit = smol::block_on(slot.permits.acquire());
        let started = Instant::now();
        let idle = lock(&slot.idle).pop();
        let inst = match idle {
            Some(mut inst) => self.arm(&mut inst.store).map(|()| inst),
            None => self.instantiate(slot),
        };
        let (outcome, keep) = match inst {
            Err(e) => (Err(self.describe(&e)), None),
            Ok(mut inst) => match f(&mut inst) {
                Ok(Ok(r)) => (Ok(r), Some(inst)),
                // The guest answered with an error: its state is sound.
                Ok(Err(msg)) => (Err(format!("returned an error: {msg}")), Some(inst)),
                // A trap may leave the instance half-way: never reuse it.
                Err(e) => (Err(self.describe(&e)), None),
            },
        };
        let took = started.elapsed();
        if let Some(inst) = keep {
            let mut idle = lock(&slot.idle);
            if idle.len() < self.config.instances_per_plugin as usize {
                idle.push(inst);
            }
        }
        match outcome {
            Ok(r) => {
                slot.stats.success(took, records);
                Ok(r)
            }
            Err(mut msg) => {
                truncate(&mut msg, FAILURE_TEXT_BYTES_MAX);
                let in_a_row = slot.stats.failure(took, records);
                warn!(
                    "plugin {}: call failed ({in_a_row} in a row): {msg}",
                    slot.name
                );
                if in_a_row >= self.config.failures_before_disable {
                    let mut disabled = lock(&slot.disabled);
                    if disabled.is_none() {
                        let why = format!("{in_a_row} failures in a row, last: {msg}");
                        warn!(
                            "plugin {}: DISABLED after {in_a_row} failures in a row; topics \
                             using it fall back to the built-in behaviour; fix it and run \
                             `eddy plugin add {} --wasm FILE`, or run `eddy plugin enable {}`, \
                             to enable it again",
                            slot.name, slot.name, slot.name
                        );
                        *disabled = Some(why.clone());
                        drop(disabled);
                        lock(&slot.idle).clear();
                        self.persist_disabled(slot, why);
                    }
                }
                Err(CallError::Failed(msg))
            }
        }
    }

    /// Runs the interceptor `chain` over a produce request: one call per
    /// plugin for the whole request. Disabled plugins are skipped (built-in
    /// behaviour: keep); a failing one fails the request with
    /// [`ErrorCode::PluginFailed`] (retriable). Batches a plugin changed are
    /// rebuilt once, in `codec` (the topic's `compression.type`, when it is
    /// not `producer`), so the append does not compress them again.
    pub async fn intercept(
        self: &Arc<Self>,
        topic: &str,
        chain: &[String],
        batches: Vec<u8>,
        dead_letter: bool,
        codec: Option<Compression>,
    ) -> Result<Intercepted, BrokerError> {
        let mut slots = Vec::with_capacity(chain.len());
        for name in chain {
            match self.slot(name) {
                Some(s) => slots.push(s),
                None => {
                    return Err(BrokerError::new(
                        ErrorCode::PluginNotFound,
                        format!(
                            "topic {topic} names interceptor {name:?} in interceptor.plugins, but \
                             no such plugin is installed; add it with `eddy plugin add {name} \
                             --wasm FILE` or change the topic config"
                        ),
                    ));
                }
            }
        }
        let host = self.clone();
        let topic = topic.to_owned();
        smol::unblock(move || {
            let (mut out, untouched) =
                host.intercept_blocking(&topic, &slots, &batches, dead_letter, codec)?;
            if untouched {
                // Every record kept as it came: the producer's bytes, not a copy.
                out.batches = Some(batches);
            }
            Ok(out)
        })
        .await
    }

    fn intercept_blocking(
        &self,
        topic: &str,
        slots: &[Arc<Slot>],
        batches: &[u8],
        dead_letter: bool,
        codec: Option<Compression>,
    ) -> Result<(Intercepted, bool), BrokerError> {
        let corrupt = |e: String| {
            BrokerError::new(
                ErrorCode::CorruptMessage,
                format!("{topic}: {e}; nothing was appended"),
            )
        };
        let internal = |e: String| {
            BrokerError::new(
                ErrorCode::UnknownServerError,
                format!("{topic}: {e}; nothing was appended"),
            )
        };
        let records::Decoded {
            batches: metas,
            flat,
            encoded,
        } = records::decode(batches).map_err(corrupt)?;
        // Whether `current` is still the request as decoded, so `encoded`
        // says where its records lie as they were encoded.
        let mut as_decoded = true;
        let total = flat.len();
        // The records still alive as the next plugin sees them, and where
        // each came from in the request. The last plugin's verdicts are not
        // applied to a copy: the batches are encoded from `current` and
        // `pending` directly.
        let mut current = flat;
        let mut pending: Option<Verdicts> = None;
        let mut origin: Vec<u32> = (0..total as u32).collect();
        let mut changed = vec![false; total];
        let mut rejected: Vec<Rejection> = Vec::new();
        let mut dead: Option<BatchBuilder> = None;
        for slot in slots {
            if let Some(answer) = pending.take() {
                // Another plugin follows: apply the previous one's verdicts.
                let mut next =
                    Flat::with_capacity(current.len(), current.data.len() + answer.data.len());
                let mut next_origin = Vec::with_capacity(current.len());
                let keys = Keys::of(&current, &answer).map_err(internal)?;
                for (i, idx) in origin.iter().enumerate() {
                    if let Some((ts, key, value, headers)) = resolve(&current, &answer, &keys, i) {
                        next.push(ts, key, value, headers).map_err(internal)?;
                        next_origin.push(*idx);
                    }
                }
                current = next;
                origin = next_origin;
                as_decoded = false;
            }
            if current.len() == 0 {
                // Nothing left for the rest of the chain.
                break;
            }
            let n = current.len();
            let answer = self.call(slot, n as u64, |inst| {
                let Bound::Interceptor(b) = &inst.bound else {
                    return Ok(Err("not an interceptor".to_owned()));
                };
                let out = b.call_intercept(&mut inst.store, topic, current.as_param())?;
                Ok(out.and_then(|v| check_verdicts(v, n)))
            });
            let answer = match answer {
                Ok(v) => v,
                Err(CallError::Unavailable(why)) => {
                    log::debug!("{topic}: interceptor {} skipped: {why}", slot.name);
                    continue;
                }
                Err(CallError::Failed(msg)) => {
                    return Err(BrokerError::new(
                        ErrorCode::PluginFailed,
                        format!(
                            "{topic}: interceptor {} failed: {msg}; nothing was appended (retry; \
                             after {} failures in a row the plugin is disabled)",
                            slot.name, self.config.failures_before_disable
                        ),
                    ));
                }
            };
            if answer.verdicts.iter().all(|v| matches!(v, Verdict::Keep)) {
                continue;
            }
            for (i, verdict) in answer.verdicts.iter().enumerate() {
                let idx = origin[i];
                match verdict {
                    Verdict::Keep | Verdict::Drop => {}
                    Verdict::Rewrite(_) => changed[idx as usize] = true,
                    Verdict::Reject(reason) => {
                        let mut reason = reason.clone();
                        truncate(&mut reason, FAILURE_TEXT_BYTES_MAX);
                        if dead_letter {
                            let builder = dead
                                .get_or_insert_with(|| BatchBuilder::new(BatchOptions::default()));
                            let extra = [
                                ("eddy.dlq.topic", Some(topic.as_bytes())),
                                ("eddy.dlq.plugin", Some(slot.name.as_bytes())),
                                ("eddy.dlq.reason", Some(reason.as_bytes())),
                            ];
                            records::push(
                                builder,
                                current.timestamp(i),
                                current.key(i),
                                current.value(i),
                                current.headers(i).chain(extra),
                            )
                            .map_err(internal)?;
                        }
                        rejected.push(Rejection {
                            index: idx as usize,
                            plugin: slot.name.to_string(),
                            reason,
                        });
                    }
                }
            }
            pending = Some(answer);
        }
        if !rejected.is_empty() && !dead_letter {
            let quoted: Vec<String> = rejected
                .iter()
                .take(REJECTIONS_QUOTED_MAX)
                .map(|r| format!("record {} rejected by {}: {}", r.index, r.plugin, r.reason))
                .collect();
            let more = rejected.len().saturating_sub(REJECTIONS_QUOTED_MAX);
            let more = if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            };
            return Err(BrokerError::new(
                ErrorCode::InvalidRecord,
                format!(
                    "{topic}: {}{more}; nothing of this request was appended",
                    quoted.join("; ")
                ),
            ));
        }
        let mut position = vec![None; total];
        for (i, idx) in origin.iter().enumerate() {
            let alive = pending.as_ref().is_none_or(|answer| {
                matches!(
                    answer.verdicts.get(i),
                    Some(Verdict::Keep | Verdict::Rewrite(_))
                )
            });
            if alive {
                position[*idx as usize] = Some(i as u32);
            }
        }
        if position.iter().all(Option::is_some) && !changed.contains(&true) {
            return Ok((Intercepted::default(), true));
        }
        let keys = match &pending {
            Some(answer) => Keys::of(&current, answer).map_err(internal)?,
            None => Keys {
                current: current.header_keys(),
                answer: Vec::new(),
            },
        };
        let copied = as_decoded.then_some(&encoded);
        let push = |builder: &mut BatchBuilder, i: usize| match &pending {
            _ if let Some(encoded) = copied
                && let Some(done) =
                    push_copied(builder, &current, encoded, pending.as_ref(), &keys, i) =>
            {
                done
            }
            None => records::push(
                builder,
                current.timestamp(i),
                current.key(i),
                current.value(i),
                current.headers_keyed(i, &keys.current),
            ),
            Some(answer) => match resolve(&current, answer, &keys, i) {
                Some((ts, key, value, headers)) => records::push(builder, ts, key, value, headers),
                None => Ok(()),
            },
        };
        let out =
            records::encode(batches, &metas, &position, &changed, codec, push).map_err(internal)?;
        let dead_letter = dead
            .map(|b| {
                b.build()
                    .map_err(|e| internal(format!("cannot encode a batch: {e}")))
            })
            .transpose()?;
        let out = Intercepted {
            batches: out,
            rejected,
            dead_letter,
        };
        Ok((out, false))
    }

    /// Splits a produce request across partitions with partitioner `name`,
    /// or hands the batches back when it is disabled or fails. Split batches
    /// are built in `codec` (the topic's `compression.type`, when it is not
    /// `producer`).
    pub async fn partition(
        self: &Arc<Self>,
        name: &str,
        topic: &str,
        partitions: u32,
        batches: Vec<u8>,
        codec: Option<Compression>,
    ) -> Result<Partitioned, BrokerError> {
        let Some(slot) = self.slot(name) else {
            return Ok(Partitioned::Fallback(batches));
        };
        let host = self.clone();
        let topic = topic.to_owned();
        smol::unblock(move || {
            let decoded = match records::decode(&batches) {
                Ok(d) => d,
                Err(e) => {
                    return Err(BrokerError::new(
                        ErrorCode::CorruptMessage,
                        format!("{topic}: {e}; nothing was appended"),
                    ));
                }
            };
            if decoded.flat.len() == 0 {
                return Ok(Partitioned::Fallback(batches));
            }
            let n = decoded.flat.len();
            let chosen = host.call(&slot, n as u64, |inst| {
                let Bound::Partitioner(b) = &inst.bound else {
                    return Ok(Err("not a partitioner".to_owned()));
                };
                let out =
                    b.call_partition(&mut inst.store, &topic, partitions, decoded.flat.as_param())?;
                Ok(out.and_then(|v| {
                    if v.len() != n {
                        Err(format!("returned {} partitions for {n} records", v.len()))
                    } else if let Some(bad) = v.iter().find(|p| **p >= partitions) {
                        Err(format!("chose partition {bad} of a topic with {partitions}"))
                    } else {
                        Ok(v)
                    }
                }))
            });
            match chosen {
                // Everything to one partition: the request's own buffer
                // goes there, not a copy of it.
                Ok(chosen) if let Some(p) = records::single_partition(&chosen) => {
                    drop(decoded);
                    Ok(Partitioned::Split(vec![(p, batches)]))
                }
                Ok(chosen) => records::split(&batches, &decoded, &chosen, codec)
                    .map(Partitioned::Split)
                    .map_err(|e| {
                        BrokerError::new(
                            ErrorCode::UnknownServerError,
                            format!("{topic}: {e}; nothing was appended"),
                        )
                    }),
                Err(CallError::Unavailable(why)) => {
                    log::debug!("{topic}: partitioner {} skipped: {why}", slot.name);
                    Ok(Partitioned::Fallback(batches))
                }
                Err(CallError::Failed(msg)) => {
                    warn!("{topic}: partitioner {name} failed, using the built-in partitioner for this request: {msg}", name = slot.name);
                    Ok(Partitioned::Fallback(batches))
                }
            }
        })
        .await
    }

    /// Asks retention plugin `name` how many old segments to delete; `None`
    /// when it is missing, disabled or failed (built-in retention only).
    /// Blocks: call it from a blocking thread.
    pub fn retention(&self, name: &str, input: &RetentionInput) -> Option<u32> {
        let slot = self.slot(name)?;
        let segments: Vec<Segment> = input
            .segments
            .iter()
            .map(|s| Segment {
                base_offset: s.base_offset,
                end_offset: s.next_offset,
                size_bytes: s.size,
                max_timestamp: s.max_timestamp,
            })
            .collect();
        let topic_config: Vec<(&str, &str)> = input
            .topic_config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let state = PartitionState {
            topic: &input.topic,
            partition: input.partition,
            segments: &segments,
            log_start_offset: input.log_start_offset,
            high_watermark: input.high_watermark,
            disk_free_bytes: input.disk_free_bytes,
            disk_total_bytes: input.disk_total_bytes,
            now_ms: input.now_ms,
            topic_config: &topic_config,
        };
        let segments = input.segments.len() as u64;
        self.call(&slot, segments, |inst| {
            let Bound::Retention(b) = &inst.bound else {
                return Ok(Err("not a retention plugin".to_owned()));
            };
            b.call_segments_to_delete(&mut inst.store, state)
        })
        .ok()
    }

    /// The data directory's plugin folder.
    pub fn dir(&self) -> PathBuf {
        self.layout.root.clone()
    }
}

/// The header keys of a batch and of a plugin's answer to it, each
/// checked once.
struct Keys<'x> {
    current: Vec<&'x str>,
    answer: Vec<&'x str>,
}

impl<'x> Keys<'x> {
    fn of(current: &'x Flat<'_>, answer: &'x Verdicts) -> Result<Keys<'x>, String> {
        Ok(Keys {
            current: current.header_keys(),
            answer: records::answer_keys(&answer.data, &answer.headers)?,
        })
    }
}

/// Pushes record `i` of `current` (the request as decoded, its records
/// where `encoded` says) by copying its encoded key, value and headers when
/// `answer` keeps them (keep, or a rewrite that only appends headers, which
/// are encoded after them); `None` when it must be encoded from its fields.
fn push_copied(
    builder: &mut BatchBuilder,
    current: &Flat<'_>,
    encoded: &records::Encoded,
    answer: Option<&Verdicts>,
    keys: &Keys<'_>,
    i: usize,
) -> Option<Result<(), String>> {
    let appended = match answer.map(|a| a.verdicts.get(i)) {
        None | Some(Some(Verdict::Keep)) => None,
        Some(Some(Verdict::Rewrite(rw)))
            if matches!(rw.key, Field::Unchanged) && matches!(rw.value, Field::Unchanged) =>
        {
            match rw.headers {
                HeaderEdit::Unchanged => None,
                HeaderEdit::Append(r) => Some(r),
                HeaderEdit::Replace(_) => return None,
            }
        }
        _ => return None,
    };
    let timestamp = current.timestamp(i);
    let pushed = match (appended, answer) {
        (Some(r), Some(answer)) => {
            let (key_value, count, own) =
                encoded.parts(&current.data, i, current.header_count(i))?;
            let added = records::header_pairs(
                &answer.data,
                &answer.headers,
                &keys.answer,
                r.first as usize,
                r.count as usize,
            );
            builder.push_encoded_parts(timestamp, 0, key_value, count, own, added)
        }
        _ => builder.push_encoded_fields(timestamp, 0, encoded.fields(&current.data, i)?),
    };
    Some(pushed.map_err(|e| format!("cannot encode a record: {e}")))
}

/// Record `i` of `current` as `answer` leaves it: `None` when dropped or
/// rejected, else its timestamp, key, value and headers (rewritten fields
/// from the answer's data, the others from `current`).
#[allow(clippy::type_complexity)]
fn resolve<'x>(
    current: &'x Flat<'_>,
    answer: &'x Verdicts,
    keys: &'x Keys<'x>,
    i: usize,
) -> Option<(
    i64,
    Option<&'x [u8]>,
    Option<&'x [u8]>,
    impl Iterator<Item = records::HeaderPair<'x>> + Clone + use<'x>,
)> {
    let data: &[u8] = &answer.data;
    let field = |f: &Field, original| match f {
        Field::Unchanged => original,
        Field::Null => None,
        Field::Bytes(s) => Some(records::slice(data, *s)),
    };
    let (key, value, own, added) = match answer.verdicts.get(i)? {
        Verdict::Keep => (current.key(i), current.value(i), usize::MAX, None),
        Verdict::Rewrite(rw) => {
            let (own, added) = match rw.headers {
                HeaderEdit::Unchanged => (usize::MAX, None),
                HeaderEdit::Replace(r) => (0, Some(r)),
                HeaderEdit::Append(r) => (usize::MAX, Some(r)),
            };
            (
                field(&rw.key, current.key(i)),
                field(&rw.value, current.value(i)),
                own,
                added,
            )
        }
        Verdict::Drop | Verdict::Reject(_) => return None,
    };
    let (first, count) = added.map_or((0, 0), |r| (r.first as usize, r.count as usize));
    let headers = current
        .headers_keyed(i, &keys.current)
        .take(own)
        .chain(records::header_pairs(
            data,
            &answer.headers,
            &keys.answer,
            first,
            count,
        ));
    Some((current.timestamp(i), key, value, headers))
}

/// An interceptor's answer, checked: one verdict per record, every span
/// and range inside its list, header keys UTF-8.
fn check_verdicts(v: Verdicts, records: usize) -> Result<Verdicts, String> {
    if v.verdicts.len() != records {
        return Err(format!(
            "returned {} verdicts for {records} records",
            v.verdicts.len()
        ));
    }
    for (i, h) in v.headers.iter().enumerate() {
        // Keys are checked to be UTF-8 once, where they are used (`Keys`).
        let key_ok = records::in_bounds(&v.data, h.key);
        let value_ok = h.value.is_none_or(|s| records::in_bounds(&v.data, s));
        if !key_ok || !value_ok {
            return Err(format!(
                "returned header {i} with a span outside its data or a key that is not UTF-8"
            ));
        }
    }
    for (i, verdict) in v.verdicts.iter().enumerate() {
        let Verdict::Rewrite(rw) = verdict else {
            continue;
        };
        let field_ok = |f: &Field| match f {
            Field::Bytes(s) => records::in_bounds(&v.data, *s),
            Field::Unchanged | Field::Null => true,
        };
        let headers_ok = match rw.headers {
            HeaderEdit::Unchanged => true,
            HeaderEdit::Replace(r) | HeaderEdit::Append(r) => (r.first as usize)
                .checked_add(r.count as usize)
                .is_some_and(|end| end <= v.headers.len()),
        };
        if !field_ok(&rw.key) || !field_ok(&rw.value) || !headers_ok {
            return Err(format!(
                "rewrote record {i} with a span or header range outside its lists"
            ));
        }
    }
    Ok(v)
}

fn not_found(name: &str) -> BrokerError {
    BrokerError::new(
        ErrorCode::PluginNotFound,
        format!("no plugin named {name:?} is installed; see `eddy plugin list`"),
    )
}

/// An error on one line: its root cause, and the outermost message when it
/// says more (wasm backtraces are left out).
fn error_text(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let top = e.to_string();
    let top = top.lines().next().unwrap_or_default().trim_end_matches(':');
    let mut text = if top.is_empty() || root.contains(top) || top.contains("wasm backtrace") {
        root
    } else {
        format!("{top}: {root}")
    };
    truncate(&mut text, FAILURE_TEXT_BYTES_MAX);
    text
}

/// Every message in the error's chain (for classifying it).
fn chain_text(e: &wasmtime::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Reads the plugin registry, lets `change` edit it and writes it back
/// (unless `change` returns `false`), all under `registry_file`, so admin
/// requests and a call that disables its plugin never lose each other's edit.
fn edit_registry(
    layout: &Layout,
    registry_file: &Mutex<()>,
    change: impl FnOnce(&mut RegistryFile) -> Result<bool, BrokerError>,
) -> Result<RegistryFile, BrokerError> {
    let storage = |m: String| BrokerError::new(ErrorCode::KafkaStorageError, m);
    let _file_lock = lock(registry_file);
    let mut file = layout.load().map_err(storage)?;
    if change(&mut file)? {
        layout.save(&file).map_err(|e| {
            storage(format!(
                "cannot save the plugin registry: {e}; check the disk"
            ))
        })?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_start_with_small_reservations_and_pulley() {
        let config = PluginsConfig {
            engine: PluginEngine::Pulley,
            memory_reservation_mb: 32,
            memory_guard_kb: 64,
            fuel_per_call: 1_000_000,
            ..PluginsConfig::default()
        };
        engine_for(&config).unwrap();
        engine_for(&PluginsConfig::default()).unwrap();
    }

    #[test]
    fn kept_and_header_appending_records_are_copied_as_the_encoder_writes_them() {
        use bindings::verdict_types::{Header, HeaderRange, Rewrite, Span};
        use eddy_core::batch::RecordHeader;
        let rewrite = |key, headers| {
            Verdict::Rewrite(Rewrite {
                key,
                value: Field::Unchanged,
                headers,
            })
        };
        let append = |first, count| HeaderEdit::Append(HeaderRange { first, count });
        let answer = Verdicts {
            verdicts: vec![
                Verdict::Keep,
                rewrite(Field::Unchanged, append(0, 1)),
                rewrite(Field::Unchanged, append(0, 2)),
                rewrite(Field::Unchanged, HeaderEdit::Unchanged),
                // These two are encoded from their fields.
                rewrite(Field::Bytes(Span { offset: 0, len: 1 }), append(0, 1)),
                rewrite(
                    Field::Null,
                    HeaderEdit::Replace(HeaderRange { first: 1, count: 1 }),
                ),
            ],
            data: b"gw".to_vec(),
            headers: vec![
                Header {
                    key: Span { offset: 0, len: 1 },
                    value: Some(Span { offset: 0, len: 2 }),
                },
                Header {
                    key: Span { offset: 1, len: 1 },
                    value: None,
                },
            ],
        };
        for compression in [Compression::None, Compression::Lz4] {
            let mut b = BatchBuilder::new(BatchOptions {
                compression,
                ..BatchOptions::default()
            });
            for i in 0..6i64 {
                let headers: Vec<RecordHeader> = (0..i % 3)
                    .map(|h| RecordHeader::new(&format!("own{h}"), (h == 0).then_some(&b"o"[..])))
                    .collect();
                let key = format!("k{i}");
                let value = vec![b'v'; 100 + i as usize];
                b.push(
                    1_000 - i * 300,
                    (i % 2 == 0).then_some(key.as_bytes()),
                    (i != 3).then_some(&value[..]),
                    &headers,
                )
                .unwrap();
            }
            let bytes = b.build().unwrap();
            let d = records::decode(&bytes).unwrap();
            for answer in [None, Some(&answer)] {
                let keys = match answer {
                    Some(a) => Keys::of(&d.flat, a).unwrap(),
                    None => Keys {
                        current: d.flat.header_keys(),
                        answer: Vec::new(),
                    },
                };
                let (mut copied, mut encoded) = (
                    BatchBuilder::new(BatchOptions::default()),
                    BatchBuilder::new(BatchOptions::default()),
                );
                for i in 0..6 {
                    let fields = match answer {
                        Some(a) => resolve(&d.flat, a, &keys, i).unwrap(),
                        None => {
                            let all = Verdicts {
                                verdicts: vec![Verdict::Keep; 6],
                                data: Vec::new(),
                                headers: Vec::new(),
                            };
                            let (ts, k, v, h) = resolve(&d.flat, &all, &keys, i).unwrap();
                            records::push(&mut encoded, ts, k, v, h).unwrap();
                            push_copied(&mut copied, &d.flat, &d.encoded, None, &keys, i)
                                .unwrap()
                                .unwrap();
                            continue;
                        }
                    };
                    let (ts, k, v, h) = fields;
                    records::push(&mut encoded, ts, k, v, h.clone()).unwrap();
                    match push_copied(&mut copied, &d.flat, &d.encoded, answer, &keys, i) {
                        Some(done) => {
                            assert!(i < 4, "record {i} must be encoded");
                            done.unwrap();
                        }
                        None => {
                            assert!(i >= 4, "record {i} must be copied");
                            records::push(&mut copied, ts, k, v, h).unwrap();
                        }
                    }
                }
                assert_eq!(copied.build().unwrap(), encoded.build().unwrap());
            }
        }
    }

    #[test]
    fn a_core_module_is_not_a_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let host = PluginHost::open(&PluginsConfig::default(), dir.path()).unwrap();
        // The smallest core module: magic and version.
        let wasm = b"\0asm\x01\0\0\0".to_vec();
        let err = smol::block_on(host.add("x", wasm, Vec::new(), None)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(err.message.contains("component"), "{}", err.message);
        assert!(host.list(|_| Vec::new()).is_empty());
    }
}
