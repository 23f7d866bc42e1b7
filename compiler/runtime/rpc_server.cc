// edgec-runner rpc-server: TVM's RPC protocol served from libtvm_runtime, with no Python on the device.
//
//   edgec-runner rpc-server [--tracker HOST:PORT --key KEY] [--host 0.0.0.0] [--port 9090]
//                           [--port-end PORT+100] [--custom-addr ADDR]
//
// What `python -m tvm.exec.rpc_server` does, for a firmware image that has no Python: listen on the
// first free port of [port, port-end); with a tracker, register there under KEY with a fresh match
// key, and register again after every session (a client takes the key from the tracker and presents
// it); serve each session in a forked child (a crash or a timeout ends that session, not the
// server) inside a fresh work directory, through libtvm_runtime's own `rpc.ServerLoop`. The child
// registers the two functions a client needs beyond the runtime's (upload, download and remove are
// the runtime's): `tvm.rpc.server.workpath` and `tvm.rpc.server.load_module`; and MetaSchedule's
// `tvm.contrib.random.random_fill_for_measure`, so that `edgec tune --rpc-*` measures on the device.
//
// The wire format follows TVM's Python server (tvm/rpc/server.py, base.py): little-endian int32
// magics and lengths, the tracker's messages as length-prefixed JSON.

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace edgec_rpc {

namespace ffi = tvm::ffi;
namespace fs = std::filesystem;

constexpr int32_t kRpcMagic = 0xff271;
constexpr int32_t kTrackerMagic = 0x2f271;
constexpr int32_t kCodeSuccess = kRpcMagic;
constexpr int32_t kCodeMismatch = kRpcMagic + 2;
enum TrackerCode { kTrackerSuccess = 0, kPut = 3, kUpdateInfo = 5, kGetPendingMatchkeys = 7 };
constexpr int kPingSeconds = 2;         // ask the tracker about our key when no client came for this long
constexpr int kUnusedKeySeconds = 4;    // a key a client took but did not use is replaced after this
constexpr int kHandshakeSeconds = 10;   // a handshake read that waits longer than this drops the connection

struct Options {
  std::string host = "0.0.0.0";
  int port = 9090;
  int port_end = 0;  // 0: port + 100
  std::string tracker_host;
  int tracker_port = 0;
  std::string key;
  std::string custom_addr;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ConnectionLost : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------------------------- sockets

void SendAll(int fd, const void* data, size_t size) {
  const char* bytes = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t sent = send(fd, bytes, size, MSG_NOSIGNAL);
    if (sent <= 0) throw ConnectionLost("send failed");
    bytes += sent;
    size -= static_cast<size_t>(sent);
  }
}

void RecvAll(int fd, void* data, size_t size) {
  char* bytes = static_cast<char*>(data);
  while (size > 0) {
    ssize_t got = recv(fd, bytes, size, 0);
    if (got <= 0) throw ConnectionLost("connection closed");
    bytes += got;
    size -= static_cast<size_t>(got);
  }
}

// int32 little-endian (every platform edgec targets is little-endian)
void SendInt(int fd, int32_t value) { SendAll(fd, &value, sizeof(value)); }

int32_t RecvInt(int fd) {
  int32_t value;
  RecvAll(fd, &value, sizeof(value));
  return value;
}

void SendString(int fd, const std::string& text) {
  SendInt(fd, static_cast<int32_t>(text.size()));
  SendAll(fd, text.data(), text.size());
}

std::string RecvString(int fd, int32_t limit = 1 << 20) {
  int32_t size = RecvInt(fd);
  if (size < 0 || size > limit) throw ConnectionLost("bad message length");
  std::string text(static_cast<size_t>(size), '\0');
  RecvAll(fd, text.data(), text.size());
  return text;
}

std::string Quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

int Connect(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return -1;
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  return fd;
}

// The listening socket on the first free port of [port, port_end); sets `bound`.
int Listen(const Options& opt, int* bound) {
  int end = opt.port_end > opt.port ? opt.port_end : opt.port + 100;
  for (int port = opt.port; port < end; ++port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) break;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, opt.host.c_str(), &addr.sin_addr) != 1) {
      close(fd);
      throw UsageError("--host must be an IPv4 address, got " + opt.host);
    }
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 && listen(fd, 8) == 0) {
      *bound = port;
      return fd;
    }
    close(fd);
  }
  throw std::runtime_error("no free port in [" + std::to_string(opt.port) + ", " + std::to_string(end) + ") on " +
                           opt.host + ": " + std::strerror(errno));
}

// ------------------------------------------------------------------------------------- tracker

class Tracker {
 public:
  Tracker(const Options& opt, int port) : opt_(opt), port_(port), random_(std::random_device{}()) {}
  ~Tracker() { Drop(); }

  bool enabled() const { return !opt_.tracker_host.empty(); }
  const std::string& match_key() const { return match_key_; }

  // Connect (retrying every second until the tracker answers), then put up a fresh match key.
  void Register() {
    match_key_ = enabled() ? opt_.key + ":" + std::to_string(std::uniform_real_distribution<double>(0, 1)(random_))
                           : opt_.key;
    if (!enabled()) return;
    for (;;) {
      try {
        if (fd_ < 0) Open();
        Request("[" + std::to_string(kPut) + ", " + Quoted(opt_.key) + ", [" + std::to_string(port_) + ", " +
                Quoted(match_key_) + "], " + CustomAddr() + "]");
        unused_seconds_ = 0;
        return;
      } catch (const ConnectionLost&) {
        Drop();
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
  }

  // Called when no client came for kPingSeconds: a key a client took but never presented is
  // replaced (as TVM's server does), and a lost tracker is reconnected.
  void Ping() {
    if (!enabled()) return;
    try {
      if (fd_ < 0) throw ConnectionLost("no tracker");
      SendString(fd_, "[" + std::to_string(kGetPendingMatchkeys) + "]");
      std::string pending = RecvString(fd_);
      unused_seconds_ = pending.find(Quoted(match_key_)) == std::string::npos ? unused_seconds_ + kPingSeconds : 0;
      if (unused_seconds_ > kUnusedKeySeconds + kPingSeconds) Register();
    } catch (const ConnectionLost&) {
      Drop();
      Register();
    }
  }

 private:
  void Open() {
    fd_ = Connect(opt_.tracker_host, opt_.tracker_port);
    if (fd_ < 0) throw ConnectionLost("tracker unreachable");
    SendInt(fd_, kTrackerMagic);
    if (RecvInt(fd_) != kTrackerMagic) {
      throw std::runtime_error(opt_.tracker_host + ":" + std::to_string(opt_.tracker_port) + " is not a TVM RPC tracker");
    }
    Request("[" + std::to_string(kUpdateInfo) + ", {\"key\": " + Quoted("server:" + opt_.key) + ", \"addr\": [" +
            CustomAddr() + ", " + std::to_string(port_) + "]}]");
  }

  void Request(const std::string& json) {
    SendString(fd_, json);
    if (RecvString(fd_) != std::to_string(kTrackerSuccess)) throw ConnectionLost("the tracker refused " + json);
  }

  std::string CustomAddr() const { return opt_.custom_addr.empty() ? "null" : Quoted(opt_.custom_addr); }

  void Drop() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  const Options& opt_;
  int port_;
  int fd_ = -1;
  int unused_seconds_ = 0;
  std::string match_key_;
  std::mt19937_64 random_;
};

// ------------------------------------------------------------------------------------- sessions

// 0 seconds: block. The server serves one connection at a time, so a peer that connects and says
// nothing (a port scanner, a half-open socket) must not hold it. The limit is per read: a peer that
// trickles its header a byte at a time can still hold it for as long as the header lasts.
void SetReceiveTimeout(int fd, int seconds) {
  timeval limit{seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
}

// The client's header: "client:<match key> [-timeout=SECONDS ...]"; answers success or mismatch.
std::optional<double> Handshake(int conn, const std::string& match_key, const std::string& key, bool* accepted) {
  *accepted = false;
  SetReceiveTimeout(conn, kHandshakeSeconds);
  if (RecvInt(conn) != kRpcMagic) return std::nullopt;
  std::string header = RecvString(conn, 4096);
  std::string first = header.substr(0, header.find(' '));
  if (first != "client:" + match_key) {
    SendInt(conn, kCodeMismatch);
    return std::nullopt;
  }
  SendInt(conn, kCodeSuccess);
  SendString(conn, "server:" + key);
  SetReceiveTimeout(conn, 0);  // a session may idle between calls for as long as its client likes
  *accepted = true;
  std::optional<double> timeout;
  size_t at = header.find(" -timeout=");
  if (at != std::string::npos) timeout = std::atof(header.c_str() + at + 10);
  return timeout;
}

// MetaSchedule's RPC runner fills a candidate's arguments with this before timing it; TVM's Python
// server has it from libtvm's contrib code, which libtvm_runtime lacks. Values: floats in [-1, 1),
// integers' bytes in [0, 8): data to time, not to check.
// Over RPC a tensor arrives as a DLTensor* (the remote handle), not an ffi::Tensor.
void RandomFill(DLTensor* tensor) {
  int64_t count = 1;
  for (int i = 0; i < tensor->ndim; ++i) count *= tensor->shape[i];
  const DLDataType dtype = tensor->dtype;
  char* data = static_cast<char*>(tensor->data) + tensor->byte_offset;
  std::mt19937 random(count);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  if (dtype.code == kDLFloat && dtype.bits == 32) {
    float* values = reinterpret_cast<float*>(data);
    for (int64_t i = 0; i < count * dtype.lanes; ++i) values[i] = uniform(random);
    return;
  }
  const int64_t bytes = count * dtype.lanes * ((dtype.bits + 7) / 8);
  for (int64_t i = 0; i < bytes; ++i) data[i] = static_cast<char>(random() % 8);
}

// In the forked child: a fresh work directory, the server functions, then the runtime's loop.
[[noreturn]] void Serve(int conn) {
  int code = 0;
  fs::path work;
  try {
    char pattern[] = "/tmp/edgec-rpc-XXXXXX";
    if (mkdtemp(pattern) == nullptr) throw std::runtime_error("cannot create a work directory in /tmp");
    work = pattern;
    fs::current_path(work);
    ffi::Function::SetGlobal("tvm.rpc.server.workpath", ffi::Function::FromTyped([work](ffi::String path) {
                               return ffi::String((work / std::string(path)).string());
                             }), true);
    ffi::Function::SetGlobal("tvm.rpc.server.load_module", ffi::Function::FromTyped([work](ffi::String name) {
                               return ffi::Module::LoadFromFile((work / std::string(name)).string());
                             }), true);
    for (const char* name : {"tvm.contrib.random.random_fill_for_measure", "tvm.contrib.random.random_fill"}) {
      if (!ffi::Function::GetGlobal(name)) ffi::Function::SetGlobal(name, ffi::Function::FromTyped(RandomFill));
    }
    ffi::Function::GetGlobalRequired("rpc.ServerLoop")(static_cast<int64_t>(conn));
  } catch (const std::exception& e) {
    std::cerr << "edgec-runner rpc-server: session failed: " << e.what() << "\n";
    code = 1;
  }
  std::error_code ignored;
  if (!work.empty()) fs::remove_all(work, ignored);
  _exit(code);
}

// Runs the session in a child process, killed after `timeout` seconds if the client set one.
void RunSession(int conn, std::optional<double> timeout) {
  pid_t child = fork();
  if (child < 0) throw std::runtime_error("fork failed");
  if (child == 0) Serve(conn);
  auto start = std::chrono::steady_clock::now();
  for (;;) {
    int status = 0;
    if (waitpid(child, &status, WNOHANG) == child) break;
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeout && *timeout > 0 && elapsed > *timeout) {
      std::cerr << "edgec-runner rpc-server: session timed out after " << *timeout << " s; ended\n";
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// ------------------------------------------------------------------------------------- main

std::pair<std::string, int> HostPort(const std::string& text) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) throw UsageError("--tracker takes HOST:PORT, got " + text);
  return {text.substr(0, colon), std::atoi(text.c_str() + colon + 1)};
}

Options Parse(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--tracker") std::tie(opt.tracker_host, opt.tracker_port) = HostPort(next());
    else if (arg == "--key") opt.key = next();
    else if (arg == "--host") opt.host = next();
    else if (arg == "--port") opt.port = std::atoi(next().c_str());
    else if (arg == "--port-end") opt.port_end = std::atoi(next().c_str());
    else if (arg == "--custom-addr") opt.custom_addr = next();
    else throw UsageError("unknown option " + arg);
  }
  if (!opt.tracker_host.empty() && opt.key.empty()) throw UsageError("--tracker needs --key KEY (what clients ask the tracker for)");
  if (opt.port <= 0 || opt.port > 65535) throw UsageError("--port must be in 1-65535");
  return opt;
}

int Main(int argc, char** argv) {
  Options opt = Parse(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  int port = 0;
  int listener = Listen(opt, &port);
  // One line a supervisor (or a test) can wait for
  std::cout << "edgec-runner rpc-server: listening on " << opt.host << ":" << port
            << (opt.tracker_host.empty() ? "" : ", key " + opt.key + " at tracker " + opt.tracker_host + ":" +
                                                    std::to_string(opt.tracker_port))
            << std::endl;
  Tracker tracker(opt, port);
  tracker.Register();
  for (;;) {
    fd_set readable;
    FD_ZERO(&readable);
    FD_SET(listener, &readable);
    timeval wait{kPingSeconds, 0};
    int ready = select(listener + 1, &readable, nullptr, nullptr, tracker.enabled() ? &wait : nullptr);
    if (ready == 0) {
      tracker.Ping();
      continue;
    }
    if (ready < 0) continue;  // interrupted
    int conn = accept(listener, nullptr, nullptr);
    if (conn < 0) continue;
    try {
      bool accepted = false;
      std::optional<double> timeout = Handshake(conn, tracker.match_key(), opt.key, &accepted);
      if (accepted) {
        RunSession(conn, timeout);
        close(conn);
        tracker.Register();  // a fresh key for the next client
        continue;
      }
    } catch (const ConnectionLost&) {
    }
    close(conn);
  }
}

}  // namespace edgec_rpc

int RpcServerMain(int argc, char** argv) {
  const char* usage =
      "usage: edgec-runner rpc-server [--tracker HOST:PORT --key KEY] [--host 0.0.0.0] [--port 9090]\n"
      "                               [--port-end PORT+100] [--custom-addr ADDR]\n";
  try {
    return edgec_rpc::Main(argc, argv);
  } catch (const edgec_rpc::UsageError& e) {
    std::cerr << "edgec-runner rpc-server: " << e.what() << "\n" << usage;
  } catch (const tvm::ffi::Error& e) {
    std::cerr << "edgec-runner rpc-server: " << e.kind() << ": " << e.message() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "edgec-runner rpc-server: " << e.what() << "\n";
  }
  return 2;
}
