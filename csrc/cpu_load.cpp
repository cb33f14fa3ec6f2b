#include "cpu_load.h"

#include <ATen/Parallel.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>

namespace seq2seq {

int64_t threads_for_load(int64_t configured, int64_t cores, double others_busy) {
  const int64_t taken = static_cast<int64_t>(std::ceil(std::max(0.0, others_busy - 0.3)));
  return std::max<int64_t>(1, std::min(configured, cores - taken));
}

namespace {

constexpr auto kWindow = std::chrono::milliseconds(200);

// Busy ticks of the CPUs in `allowed` (user, nice, system, irq, softirq, steal), from /proc/stat.
bool busy_ticks(const cpu_set_t& allowed, double& busy) {
  std::ifstream stat("/proc/stat");
  std::string line;
  busy = 0;
  bool any = false;
  while (std::getline(stat, line)) {
    if (line.compare(0, 3, "cpu") != 0) break;
    if (line.size() < 4 || line[3] < '0' || line[3] > '9') continue;  // the "cpu" total
    std::istringstream in(line.substr(3));
    int cpu = 0;
    double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
    in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
    if (!in || cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed)) continue;
    busy += user + nice + system + irq + softirq + steal;
    any = true;
  }
  return any;
}

// This process's CPU ticks (utime + stime), from /proc/self/stat.
bool own_ticks(double& ticks) {
  std::ifstream stat("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return false;
  std::istringstream in(text.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 13; ++i) in >> field;  // state .. cmajflt
  double utime = 0, stime = 0;
  in >> utime >> stime;
  ticks = utime + stime;
  return static_cast<bool>(in);
}

struct Sampler {
  std::mutex mutex;
  std::chrono::steady_clock::time_point at;
  double busy = 0, own = 0;
  bool started = false;
  CpuLoad load;
};

}  // namespace

CpuLoad cpu_load_now() {
  static Sampler sampler;
  std::lock_guard<std::mutex> lock(sampler.mutex);
  const auto now = std::chrono::steady_clock::now();
  if (sampler.started && now - sampler.at < kWindow) return sampler.load;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return sampler.load;
  double busy = 0, own = 0;
  if (!busy_ticks(allowed, busy) || !own_ticks(own)) return sampler.load;
  const double ticks_per_s = static_cast<double>(sysconf(_SC_CLK_TCK));
  if (sampler.started) {
    const double seconds = std::chrono::duration<double>(now - sampler.at).count();
    const double others = ((busy - sampler.busy) - (own - sampler.own)) / ticks_per_s / seconds;
    sampler.load.others_busy = std::max(0.0, others);
  }
  sampler.load.cores = CPU_COUNT(&allowed);
  sampler.at = now;
  sampler.busy = busy;
  sampler.own = own;
  sampler.started = true;
  return sampler.load;
}

LoadThreads::LoadThreads() {
  static const bool fixed = [] {
    const char* v = std::getenv("SEQ2SEQ_THREADS_FOLLOW_LOAD");
    return v && std::strcmp(v, "0") == 0;
  }();
  before_ = during_ = at::get_num_threads();
  if (fixed || before_ == 1) return;
  const CpuLoad load = cpu_load_now();
  during_ = threads_for_load(before_, load.cores, load.others_busy);
  if (during_ != before_) at::set_num_threads(static_cast<int>(during_));
}

LoadThreads::~LoadThreads() {
  if (during_ != before_) at::set_num_threads(static_cast<int>(before_));
}

}  // namespace seq2seq
