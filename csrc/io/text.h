// Text as the Python side prepares it before tokenizing (seq2seq.data.clean.normalize with
// neither lowercasing nor ASCII folding), so that C++ front ends give the same tokens.
#pragma once

#include <cstddef>
#include <string>

namespace seq2seq {

// Unicode NFC, control characters (category Cc) made spaces, runs of whitespace (Python's
// str.isspace) one space, none at either end. UTF-8 in and out.
std::string normalize(const std::string& utf8);

// Characters (code points) in UTF-8 text: what Python's len() counts.
size_t code_points(const std::string& utf8);

}  // namespace seq2seq
