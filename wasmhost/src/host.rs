//! [`Host`]: a compiled module plus what its VMs share, and how a VM starts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use wasmi::{Config, Engine, Linker, Module, Store};

use crate::error::HostError;
use crate::imports;
use crate::shared::Shared;
use crate::state::{HostState, Phase};
use crate::vm::Vm;

/// A compiled proxy-wasm module and the process it runs in: VMs started from
/// one host share shared data, queues, metrics and the clock, as Envoy's
/// per-worker VMs of one plugin do.
pub struct Host {
    engine: Engine,
    module: Module,
    linker: Linker<HostState>,
    shared: Arc<Mutex<Shared>>,
    clusters: BTreeSet<String>,
    properties: HashMap<Vec<u8>, Vec<u8>>,
    vm_configuration: Vec<u8>,
    vm_id: String,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("clusters", &self.clusters)
            .field("vm_id", &self.vm_id)
            .finish_non_exhaustive()
    }
}

/// A property path as the ABI sends it: `"source.address"` → `source\0address`.
pub(crate) fn property_path(dotted: &str) -> Vec<u8> {
    dotted.replace('.', "\0").into_bytes()
}

impl Host {
    /// Reads and compiles the module at `path` (compiled once; each VM is a
    /// cheap instantiation).
    pub fn load(path: impl AsRef<Path>) -> Result<Host, HostError> {
        let path = path.as_ref();
        let wasm =
            std::fs::read(path).map_err(|e| HostError::Load(format!("{}: {e}", path.display())))?;
        Host::from_bytes(&wasm)
    }

    pub fn from_bytes(wasm: &[u8]) -> Result<Host, HostError> {
        let mut config = Config::default();
        // Fuel bounds each call, so a module that loops fails the test instead of hanging it.
        config.consume_fuel(true);
        let engine = Engine::new(&config);
        let module = Module::new(&engine, wasm).map_err(|e| HostError::Load(e.to_string()))?;
        let linker =
            imports::linker(&engine, &module).map_err(|e| HostError::Load(e.to_string()))?;
        Ok(Host {
            engine,
            module,
            linker,
            shared: Arc::default(),
            clusters: BTreeSet::new(),
            properties: HashMap::new(),
            vm_configuration: Vec::new(),
            vm_id: String::new(),
        })
    }

    /// Declares an upstream cluster: callouts to any other are refused with
    /// `BadArgument`, as Envoy does.
    pub fn cluster(&mut self, name: &str) -> &mut Self {
        self.clusters.insert(name.to_owned());
        self
    }

    /// A property every stream of later VMs sees (a dotted path, e.g.
    /// `"source.address"`), unless the request sets its own.
    pub fn property(&mut self, path: &str, value: impl AsRef<[u8]>) -> &mut Self {
        self.properties
            .insert(property_path(path), value.as_ref().to_vec());
        self
    }

    /// The VM configuration later VMs read in `proxy_on_vm_start`.
    pub fn vm_configuration(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.vm_configuration = bytes.as_ref().to_vec();
        self
    }

    /// The `vm_id` of later VMs: shared data and queues are per `vm_id`.
    pub fn vm_id(&mut self, id: &str) -> &mut Self {
        self.vm_id = id.to_owned();
        self
    }

    /// The host clock, in nanoseconds since the Unix epoch.
    pub fn now_ns(&self) -> u64 {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).now_ns
    }

    pub fn set_now_ns(&self, now_ns: u64) {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).now_ns = now_ns;
    }

    /// A counter or gauge summed over every VM of this host.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .metric_value(name)
    }

    /// A new VM with its root context created (`_initialize`,
    /// `proxy_on_context_create(root, 0)`), not yet started or configured.
    pub fn instantiate(&self) -> Result<Vm, HostError> {
        let vm = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .new_vm();
        let state = HostState {
            memory: None,
            allocate: None,
            shared: Arc::clone(&self.shared),
            vm,
            vm_id: self.vm_id.clone(),
            phase: Phase::Other,
            effective: 0,
            contexts: BTreeMap::new(),
            properties: self.properties.clone(),
            clusters: self.clusters.clone(),
            vm_configuration: self.vm_configuration.clone(),
            plugin_configuration: Vec::new(),
            logs: Vec::new(),
            echo_logs: std::env::var_os("WASMHOST_LOG").is_some(),
            calls: Vec::new(),
            next_token: 1,
            answer: None,
            tick_period_ms: 0,
            tick_anchor_ns: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            random_state: 0x9e37_79b9_7f4a_7c15 ^ vm,
        };
        let mut store = Store::new(&self.engine, state);
        store
            .set_fuel(crate::vm::FUEL_PER_CALL)
            .map_err(|e| HostError::Load(e.to_string()))?;
        let instance = self
            .linker
            .instantiate_and_start(&mut store, &self.module)
            .map_err(|e| HostError::Load(e.to_string()))?;
        store.data_mut().memory = instance.get_memory(&store, "memory");
        store.data_mut().allocate = instance
            .get_typed_func::<i32, i32>(&store, "proxy_on_memory_allocate")
            .ok();
        Vm::boot(store, instance)
    }

    /// A VM started and configured with `plugin_configuration`, as Envoy does
    /// when it loads the plugin. `Err(HostError::ConfigureRefused)` (with the
    /// module's logs) if `proxy_on_configure` returned false.
    pub fn start(&self, plugin_configuration: impl AsRef<[u8]>) -> Result<Vm, HostError> {
        let mut vm = self.instantiate()?;
        if !vm.vm_start()? {
            return Err(HostError::VmStartRefused {
                logs: vm.logs().to_vec(),
            });
        }
        if !vm.configure(plugin_configuration)? {
            return Err(HostError::ConfigureRefused {
                logs: vm.logs().to_vec(),
            });
        }
        Ok(vm)
    }
}
