// Small helpers every part of the engine and its programs share; header-only so that the
// programs which do not link the engine (seq2seq-loadgen) can use them too.
#pragma once

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/stat.h>

namespace seq2seq {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kPad = 0, kUnk = 1, kBos = 2, kEos = 3;

// Throws std::invalid_argument with the message: a bad input, named.
inline void check(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

// The size of a regular file; std::runtime_error naming the path for anything else. Checked
// before opening: a FIFO would block the reader forever and a device such as /dev/zero never ends.
inline uint64_t regular_file_size(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) throw std::runtime_error(path + ": cannot be read (missing, or no permission)");
  if (S_ISREG(st.st_mode)) return static_cast<uint64_t>(st.st_size);
  const char* kind = S_ISDIR(st.st_mode)                         ? "a directory"
                     : S_ISFIFO(st.st_mode)                      ? "a FIFO"
                     : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                                                                 : "a socket";
  throw std::runtime_error(path + ": is " + kind + ", not a regular file; give the path of a regular file");
}

// The whole of a regular file; std::runtime_error naming the path when it cannot be read.
inline std::string read_file(const std::string& path) {
  regular_file_size(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot be read (missing, or no permission)");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A command-line number: the whole text must parse, else an error naming the flag and `kind`.
inline double parse_number(const std::string& flag, const std::string& text, const char* kind = "a number") {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || !std::isfinite(v))
    throw std::invalid_argument(flag + " takes " + kind + ", not '" + text + "'");
  return v;
}

// A whole number: "--clients 1.5" is an error, not one client.
inline int64_t parse_integer(const std::string& flag, const std::string& text) {
  const double v = parse_number(flag, text, "an integer");
  if (v != std::floor(v) || std::fabs(v) > 9.0e15)
    throw std::invalid_argument(flag + " takes an integer, not '" + text + "'");
  return static_cast<int64_t>(v);
}

}  // namespace seq2seq
