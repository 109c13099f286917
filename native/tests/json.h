// A minimal JSON reader for the fixture files (objects, arrays, numbers, strings, booleans, null).
// Enough for test/fixtures/*.json; not a general-purpose parser (no \u escapes beyond ASCII).
#pragma once

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace kmcl {
namespace testing {

struct Json {
  enum class Type { Null, Bool, Number, String, Array, Object } type = Type::Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::vector<std::pair<std::string, Json>> object;

  const Json* find(const std::string& key) const {
    for (const auto& kv : object)
      if (kv.first == key) return &kv.second;
    return nullptr;
  }
  const Json& at(const std::string& key) const {
    const Json* j = find(key);
    if (!j) throw std::runtime_error("JSON: missing key \"" + key + "\"");
    return *j;
  }
  double num() const {
    if (type != Type::Number) throw std::runtime_error("JSON: expected a number");
    return number;
  }
  std::vector<double> numbers() const {
    if (type != Type::Array) throw std::runtime_error("JSON: expected an array");
    std::vector<double> v;
    v.reserve(array.size());
    for (const auto& e : array) v.push_back(e.num());
    return v;
  }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : p_(text.c_str()), end_(text.c_str() + text.size()) {}

  Json parse() {
    Json j = value();
    ws();
    if (p_ != end_) fail("trailing characters");
    return j;
  }

 private:
  const char* p_;
  const char* end_;

  [[noreturn]] void fail(const char* what) { throw std::runtime_error(std::string("JSON: ") + what); }
  void ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  bool lit(const char* s) {
    const char* q = p_;
    for (; *s; ++s, ++q)
      if (q >= end_ || *q != *s) return false;
    p_ = q;
    return true;
  }
  Json value() {
    ws();
    if (p_ >= end_) fail("unexpected end");
    Json j;
    const char c = *p_;
    if (c == '{') {
      j.type = Json::Type::Object;
      ++p_;
      ws();
      if (p_ < end_ && *p_ == '}') {
        ++p_;
        return j;
      }
      for (;;) {
        ws();
        if (p_ >= end_ || *p_ != '"') fail("expected a key");
        std::string key = str();
        ws();
        if (p_ >= end_ || *p_ != ':') fail("expected ':'");
        ++p_;
        j.object.emplace_back(std::move(key), value());
        ws();
        if (p_ < end_ && *p_ == ',') {
          ++p_;
          continue;
        }
        if (p_ < end_ && *p_ == '}') {
          ++p_;
          return j;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      j.type = Json::Type::Array;
      ++p_;
      ws();
      if (p_ < end_ && *p_ == ']') {
        ++p_;
        return j;
      }
      for (;;) {
        j.array.push_back(value());
        ws();
        if (p_ < end_ && *p_ == ',') {
          ++p_;
          continue;
        }
        if (p_ < end_ && *p_ == ']') {
          ++p_;
          return j;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      j.type = Json::Type::String;
      j.string = str();
      return j;
    }
    if (lit("true")) {
      j.type = Json::Type::Bool;
      j.boolean = true;
      return j;
    }
    if (lit("false")) {
      j.type = Json::Type::Bool;
      return j;
    }
    if (lit("null")) return j;
    char* after = nullptr;
    const double v = std::strtod(p_, &after);
    if (after == p_) fail("unexpected character");
    p_ = after;
    j.type = Json::Type::Number;
    j.number = v;
    return j;
  }
  std::string str() {
    ++p_;  // opening quote
    std::string s;
    while (p_ < end_ && *p_ != '"') {
      if (*p_ == '\\') {
        ++p_;
        if (p_ >= end_) fail("bad escape");
        switch (*p_) {
          case 'n': s += '\n'; break;
          case 't': s += '\t'; break;
          case 'r': s += '\r'; break;
          case 'b': s += '\b'; break;
          case 'f': s += '\f'; break;
          case 'u':
            if (end_ - p_ < 5) fail("bad \\u escape");
            s += static_cast<char>(std::strtol(std::string(p_ + 1, p_ + 5).c_str(), nullptr, 16) & 0x7f);
            p_ += 4;
            break;
          default: s += *p_;
        }
        ++p_;
      } else {
        s += *p_++;
      }
    }
    if (p_ >= end_) fail("unterminated string");
    ++p_;
    return s;
  }
};

}  // namespace testing
}  // namespace kmcl
