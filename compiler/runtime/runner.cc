// edgec-runner: run an edgec model library (model.so) in TVM's Relax VM without Python.
//
//   edgec-runner MODEL.so --input FILE.npy [--input FILE.npy ...] [--output-dir DIR] [--calibrated T]
//                [--bench [--warmup N] [--runs N]]
//   edgec-runner rpc-server [--tracker HOST:PORT --key KEY] ...   (rpc_server.cc: a TVM RPC server)
//
// Inputs are .npy files (format 1.0/2.0/3.0, little-endian, C order) given in the model's input
// order. Outputs are written as DIR/output<i>.npy; with --calibrated T (the manifest's softmax
// temperature) output0.npy holds softmax(output0 / T) over its last axis instead. With --bench, the model runs N times after W
// warm-up runs and one JSON line of latency statistics in milliseconds, with the runner's peak
// resident memory in bytes ("peak_rss_bytes"), goes to stdout.
// Any error prints one line on stderr and exits with code 2.
//
// Links against libtvm_runtime.so (which registers the VM) and libtvm_ffi.so; uses tvm_ffi headers only.

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>


namespace ffi = tvm::ffi;
namespace fs = std::filesystem;

namespace {

constexpr int kPooledAllocator = 2;  // tvm::runtime::vm::AllocatorType::kPooled
constexpr DLDevice kCPU{kDLCPU, 0};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------------------------------ .npy

// numpy dtype descriptor (without byte order) <-> DLDataType
struct NpyType {
  const char* descr;
  DLDataType dtype;
};
constexpr NpyType kNpyTypes[] = {
    {"f2", {kDLFloat, 16, 1}}, {"f4", {kDLFloat, 32, 1}}, {"f8", {kDLFloat, 64, 1}},
    {"i1", {kDLInt, 8, 1}},    {"i2", {kDLInt, 16, 1}},   {"i4", {kDLInt, 32, 1}},
    {"i8", {kDLInt, 64, 1}},   {"u1", {kDLUInt, 8, 1}},   {"u2", {kDLUInt, 16, 1}},
    {"u4", {kDLUInt, 32, 1}},  {"u8", {kDLUInt, 64, 1}},  {"b1", {kDLBool, 8, 1}},
};

std::string SupportedDescrs() {
  std::string out;
  for (const NpyType& t : kNpyTypes) out += std::string(out.empty() ? "" : ", ") + t.descr;
  return out;
}

// 64-byte aligned host memory, as TVM's own CPU allocator provides.
struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
    if (t->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// The text after `'key':` in a numpy header dict.
std::string HeaderValue(const std::string& header, const std::string& key, const std::string& file) {
  size_t pos = header.find("'" + key + "'");
  if (pos == std::string::npos) throw std::runtime_error(file + ": .npy header lacks '" + key + "'");
  pos = header.find(':', pos);
  return header.substr(header.find_first_not_of(' ', pos + 1));
}

DLDataType ParseDescr(const std::string& value, const std::string& file) {
  std::string descr = value.substr(1, value.find('\'', 1) - 1);  // value starts with a quote
  char order = descr.empty() ? '?' : descr[0];
  std::string code = descr.substr(1);
  bool one_byte = code.size() == 2 && code[1] == '1';
  if (order != '<' && order != '|' && !(order == '>' && one_byte)) {
    throw std::runtime_error(file + ": dtype '" + descr +
                             "' is not little-endian; save it with arr.astype(arr.dtype.newbyteorder('<'))");
  }
  for (const NpyType& t : kNpyTypes) {
    if (code == t.descr) return t.dtype;
  }
  throw std::runtime_error(file + ": unsupported dtype '" + descr + "'; supported: " + SupportedDescrs());
}

std::vector<int64_t> ParseShape(const std::string& value, const std::string& file) {
  if (value.empty() || value[0] != '(') throw std::runtime_error(file + ": bad shape in .npy header");
  std::vector<int64_t> shape;
  std::istringstream in(value.substr(1, value.find(')') - 1));
  for (std::string dim; std::getline(in, dim, ',');) {
    if (dim.find_first_not_of(' ') == std::string::npos) continue;  // "(4,)" has an empty tail
    shape.push_back(std::stoll(dim));
  }
  return shape;
}

ffi::Tensor ReadNpy(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open input file '" + file + "'");
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    throw std::runtime_error(file + ": not a .npy file; save inputs with numpy.save");
  }
  int major = static_cast<unsigned char>(magic[6]);
  if (major < 1 || major > 3) throw std::runtime_error(file + ": unsupported .npy format " + std::to_string(major));
  unsigned char len_bytes[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(len_bytes), major == 1 ? 2 : 4);
  size_t header_len = len_bytes[0] | len_bytes[1] << 8 | len_bytes[2] << 16 | size_t(len_bytes[3]) << 24;
  std::string header(header_len, '\0');
  if (!in.read(header.data(), header_len)) throw std::runtime_error(file + ": truncated .npy header");

  if (HeaderValue(header, "fortran_order", file).rfind("False", 0) != 0) {
    throw std::runtime_error(file + ": array is in Fortran order; save np.ascontiguousarray(arr)");
  }
  DLDataType dtype = ParseDescr(HeaderValue(header, "descr", file), file);
  std::vector<int64_t> shape = ParseShape(HeaderValue(header, "shape", file), file);
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape.data(), shape.size()), dtype, kCPU);
  size_t bytes = ffi::GetDataSize(*tensor.GetDLTensorPtr());
  if (!in.read(static_cast<char*>(tensor.data_ptr()), bytes)) {
    throw std::runtime_error(file + ": data is shorter than its header's shape says");
  }
  return tensor;
}

std::string NpyDescr(DLDataType dtype) {
  for (const NpyType& t : kNpyTypes) {
    if (t.dtype.code == dtype.code && t.dtype.bits == dtype.bits && dtype.lanes == 1) {
      return std::string(t.descr[1] == '1' ? "|" : "<") + t.descr;
    }
  }
  throw std::runtime_error("output dtype " + std::string(ffi::DLDataTypeToString(dtype)) + " has no .npy equivalent");
}

void WriteNpy(const fs::path& path, const ffi::Tensor& tensor) {
  if (tensor.device().device_type != kDLCPU || !tensor.IsContiguous()) {
    throw std::runtime_error("output for '" + path.string() + "' is not a contiguous CPU tensor");
  }
  std::string shape = "(";
  for (int64_t dim : tensor.shape()) shape += std::to_string(dim) + ", ";
  if (tensor.ndim() > 0) shape.erase(shape.size() - (tensor.ndim() == 1 ? 1 : 2));
  shape += ")";
  std::string header = "{'descr': '" + NpyDescr(tensor.dtype()) + "', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append(63 - (10 + header.size()) % 64, ' ').push_back('\n');  // pad the whole preamble to 64 bytes
  uint16_t header_len = static_cast<uint16_t>(header.size());

  fs::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const char len_bytes[2] = {static_cast<char>(header_len & 0xff), static_cast<char>(header_len >> 8)};
    out.write(len_bytes, 2).write(header.data(), header.size());
    const DLTensor* t = tensor.GetDLTensorPtr();
    out.write(static_cast<const char*>(t->data) + t->byte_offset, ffi::GetDataSize(*t));
    if (!out) throw std::runtime_error("cannot write '" + tmp.string() + "'");
  }
  fs::rename(tmp, path);
}

// --------------------------------------------------------------------------------------------- VM

// The VM's result as a flat list of tensors: a single Tensor, or a (nested) tuple of them.
void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto tensor = value.as<ffi::Tensor>()) {
    out->push_back(*tensor);
  } else if (auto array = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *array) Flatten(item, out);
  } else {
    throw std::runtime_error("model returned a " + value.GetTypeKey() + ", not tensors");
  }
}

ffi::Function LoadMain(const std::string& library) {
  if (!fs::is_regular_file(library)) throw std::runtime_error("model library '" + library + "' does not exist");
  ffi::Module lib = ffi::Module::LoadFromFile(library);
  ffi::Optional<ffi::Function> load = lib->GetFunction("vm_load_executable");
  if (!load) throw std::runtime_error("'" + library + "' is not a Relax VM library (no vm_load_executable)");
  ffi::Module vm = (*load)().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  ffi::Optional<ffi::Function> main = vm->GetFunction("main");
  if (!main) throw std::runtime_error("'" + library + "' has no function 'main'");
  return *main;
}

ffi::Any Run(const ffi::Function& main, const std::vector<ffi::Tensor>& inputs) {
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  ffi::Any result;
  main.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  return result;
}

// ------------------------------------------------------------------------------------------ bench

// Percentile of sorted samples with linear interpolation (numpy's default method).
double Percentile(const std::vector<double>& sorted, double p) {
  double pos = p / 100.0 * (sorted.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos));
  size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

// The runner's own peak resident set size in bytes so far (the model, TVM's runtime and the runner;
// under qemu-user, the emulator's too): VmHWM of /proc/self/status, -1 if unknown. Not getrusage's
// ru_maxrss: Linux carries it across fork and exec, so a runner started by a 2 GB Python process
// reported 2.6 GB.
long long PeakRssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;  // "VmHWM:   1234 kB"
  }
  return -1;
}

std::string BenchJson(std::vector<double> ms, int warmup) {
  std::sort(ms.begin(), ms.end());
  double mean = 0, var = 0;
  for (double x : ms) mean += x / ms.size();
  for (double x : ms) var += (x - mean) * (x - mean) / ms.size();  // population std, like numpy
  long long peak_rss = PeakRssBytes();
  char rss[32] = "null";
  if (peak_rss > 0) std::snprintf(rss, sizeof(rss), "%lld", peak_rss);
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "{\"runs\":%zu,\"warmup\":%d,\"min\":%.6f,\"mean\":%.6f,\"p50\":%.6f,\"p90\":%.6f,"
                "\"p99\":%.6f,\"max\":%.6f,\"std\":%.6f,\"peak_rss_bytes\":%s}",
                ms.size(), warmup, ms.front(), mean, Percentile(ms, 50), Percentile(ms, 90),
                Percentile(ms, 99), ms.back(), std::sqrt(var), rss);
  return buf;
}

std::vector<double> Bench(const ffi::Function& main, const std::vector<ffi::Tensor>& inputs, int warmup, int runs) {
  for (int i = 0; i < warmup; ++i) Run(main, inputs);
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    auto start = std::chrono::steady_clock::now();
    Run(main, inputs);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return ms;
}

// -------------------------------------------------------------------------------------------- CLI

struct Options {
  std::string library;
  std::vector<std::string> inputs;
  std::string output_dir;
  bool bench = false;
  int warmup = 3;
  int runs = 20;
  double temperature = 0;  // --calibrated T; 0: the first output is written as the model computed it
};

double ParseTemperature(const std::string& flag, const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::logic_error&) {
  }
  if (used != text.size() || !(value > 0) || !std::isfinite(value)) {
    throw UsageError(flag + " needs a softmax temperature > 0, got '" + text + "'");
  }
  return value;
}

// softmax(scores / T) over the last axis of a float32 output, into a new tensor (the VM's result may
// be an input tensor itself). Scores that are already probabilities (every row non-negative, summing
// to 1 within 1e-3) are scaled as log(max(p, 1e-12)), as compiler/evaluate.py's as_logits does.
ffi::Tensor Calibrated(const ffi::Tensor& scores, double temperature) {
  DLDataType dtype = scores.dtype();
  if (dtype.code != kDLFloat || dtype.bits != 32 || dtype.lanes != 1 || scores.ndim() == 0 ||
      scores.device().device_type != kDLCPU || !scores.IsContiguous()) {
    throw std::runtime_error("--calibrated applies to a float32 first output of class scores, not " +
                             std::string(ffi::DLDataTypeToString(dtype)) + " of rank " + std::to_string(scores.ndim()));
  }
  const DLTensor* t = scores.GetDLTensorPtr();
  const float* in = reinterpret_cast<const float*>(static_cast<const char*>(t->data) + t->byte_offset);
  std::vector<double> x(in, in + scores.numel());
  size_t classes = static_cast<size_t>(scores.shape()[scores.ndim() - 1]);
  bool probabilities = true;
  for (size_t row = 0; classes > 0 && row < x.size(); row += classes) {
    double sum = 0;
    for (size_t c = row; c < row + classes; ++c) {
      probabilities = probabilities && x[c] >= 0;
      sum += x[c];
    }
    probabilities = probabilities && std::fabs(sum - 1.0) <= 1e-3;
  }
  if (probabilities) for (double& v : x) v = std::log(std::max(v, 1e-12));
  ffi::Tensor out = ffi::Tensor::FromNDAlloc(AlignedAlloc(), scores.shape(), dtype, kCPU);
  float* dst = static_cast<float*>(out.data_ptr());
  for (size_t row = 0; classes > 0 && row < x.size(); row += classes) {
    double top = -INFINITY, sum = 0;
    for (size_t c = row; c < row + classes; ++c) top = std::max(top, x[c] / temperature);
    for (size_t c = row; c < row + classes; ++c) sum += (x[c] = std::exp(x[c] / temperature - top));
    for (size_t c = row; c < row + classes; ++c) dst[c] = static_cast<float>(x[c] / sum);
  }
  return out;
}

int ParseCount(const std::string& flag, const std::string& text, int minimum) {
  size_t used = 0;
  int value = -1;
  try {
    value = std::stoi(text, &used);
  } catch (const std::logic_error&) {
  }
  if (used != text.size() || value < minimum) {
    throw UsageError(flag + " needs an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
  }
  return value;
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--input") opt.inputs.push_back(next());
    else if (arg == "--output-dir") opt.output_dir = next();
    else if (arg == "--bench") opt.bench = true;
    else if (arg == "--warmup") opt.warmup = ParseCount(arg, next(), 0);
    else if (arg == "--runs") opt.runs = ParseCount(arg, next(), 1);
    else if (arg == "--calibrated") opt.temperature = ParseTemperature(arg, next());
    else if (arg.rfind("--", 0) == 0 || !opt.library.empty()) throw UsageError("unexpected argument '" + arg + "'");
    else opt.library = arg;
  }
  if (opt.library.empty()) throw UsageError("missing MODEL.so");
  if (opt.output_dir.empty() && !opt.bench) throw UsageError("pass --output-dir DIR, --bench, or both");
  return opt;
}

int Main(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);
  std::vector<ffi::Tensor> inputs;
  for (const std::string& file : opt.inputs) inputs.push_back(ReadNpy(file));
  ffi::Function main = LoadMain(opt.library);

  std::vector<ffi::Tensor> outputs;
  Flatten(Run(main, inputs), &outputs);
  if (!opt.output_dir.empty()) {
    if (opt.temperature > 0 && !outputs.empty()) outputs[0] = Calibrated(outputs[0], opt.temperature);
    fs::create_directories(opt.output_dir);
    for (size_t i = 0; i < outputs.size(); ++i) {
      WriteNpy(fs::path(opt.output_dir) / ("output" + std::to_string(i) + ".npy"), outputs[i]);
    }
  }
  if (opt.bench) std::cout << BenchJson(Bench(main, inputs, opt.warmup, opt.runs), opt.warmup) << std::endl;
  return 0;
}

}  // namespace

int RpcServerMain(int argc, char** argv);  // rpc_server.cc

int main(int argc, char** argv) {
  const char* usage =
      "usage: edgec-runner MODEL.so --input FILE.npy [--input FILE.npy ...] [--output-dir DIR] [--calibrated T]\n"
      "                    [--bench [--warmup N] [--runs N]]\n"
      "       edgec-runner rpc-server [--tracker HOST:PORT --key KEY] [--port 9090] ...\n";
  if (argc > 1 && std::string(argv[1]) == "rpc-server") return RpcServerMain(argc - 1, argv + 1);
  try {
    return Main(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "edgec-runner: " << e.what() << "\n" << usage;
  } catch (const ffi::Error& e) {
    std::cerr << "edgec-runner: " << e.kind() << ": " << e.message() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "edgec-runner: " << e.what() << "\n";
  }
  return 2;
}
