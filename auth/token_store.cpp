#include "auth/token_store.hpp"

#include "common/base64.hpp"

#include <argon2.h>
#include <boost/json.hpp>
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>

namespace xo::auth {

namespace {

namespace json = boost::json;
constexpr char magic[4] = {'X', 'O', 'T', 'S'};
constexpr std::uint8_t version = 1;
constexpr std::uint8_t kind_key_file = 1;
constexpr std::uint8_t kind_password = 2;
constexpr std::size_t header_size = 4 + 1 + 1 + 16;  // magic, version, kind, salt
constexpr std::size_t nonce_size = 12;
constexpr std::size_t tag_size = 16;
constexpr std::size_t max_file = 1 << 20;

struct cleanse_guard {
  std::string& s;
  ~cleanse_guard() { OPENSSL_cleanse(s.data(), s.size()); }
};

std::string aad_for(std::string_view header, std::string_view account) {
  std::string aad{header};
  aad.append(account);
  return aad;
}

bool gcm_seal(const store_key& key, std::string_view aad, const std::string& plain,
          const unsigned char* nonce, std::string& out) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (!ctx) return false;
  int len = 0;
  std::string ct(plain.size() + tag_size, '\0');
  auto* p = reinterpret_cast<unsigned char*>(ct.data());
  bool ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, nonce_size, nullptr) == 1 &&
            EVP_EncryptInit_ex(ctx, nullptr, nullptr, key.data(), nonce) == 1 &&
            EVP_EncryptUpdate(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                              static_cast<int>(aad.size())) == 1 &&
            EVP_EncryptUpdate(ctx, p, &len, reinterpret_cast<const unsigned char*>(plain.data()),
                              static_cast<int>(plain.size())) == 1;
  int fin = 0;
  ok = ok && EVP_EncryptFinal_ex(ctx, p + len, &fin) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, tag_size, p + plain.size()) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (ok) out.append(ct);
  return ok;
}

// False when the tag does not verify (wrong key, tampered file or wrong account).
bool gcm_open(const store_key& key, std::string_view aad, std::string_view sealed,
          const unsigned char* nonce, std::string& plain) {
  if (sealed.size() < tag_size) return false;
  std::size_t n = sealed.size() - tag_size;
  plain.assign(n, '\0');
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (!ctx) return false;
  int len = 0;
  std::string tag{sealed.substr(n)};
  bool ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, nonce_size, nullptr) == 1 &&
            EVP_DecryptInit_ex(ctx, nullptr, nullptr, key.data(), nonce) == 1 &&
            EVP_DecryptUpdate(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                              static_cast<int>(aad.size())) == 1 &&
            EVP_DecryptUpdate(ctx, reinterpret_cast<unsigned char*>(plain.data()), &len,
                              reinterpret_cast<const unsigned char*>(sealed.data()),
                              static_cast<int>(n)) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, tag_size, tag.data()) == 1;
  int fin = 0;
  ok = ok && EVP_DecryptFinal_ex(ctx, reinterpret_cast<unsigned char*>(plain.data()) + len, &fin) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) {
    OPENSSL_cleanse(plain.data(), plain.size());
    plain.clear();
  }
  return ok;
}

std::string to_json(const stored_grant& g) {
  json::object o;
  o["account"] = g.account;
  o["provider"] = g.provider;
  o["client_id"] = g.client_id;
  o["tenant"] = g.tenant;
  o["refresh_token"] = std::string{g.refresh_token.reveal()};
  o["access_token"] = std::string{g.access_token.reveal()};
  o["access_expires"] = g.access_expires_unix;
  o["scope"] = g.scope;
  o["state"] = g.state;
  o["last_error"] = g.last_error;
  o["updated"] = g.updated_unix;
  return json::serialize(o);
}

std::optional<stored_grant> from_json(std::string_view text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return std::nullopt;
  const auto& o = v.as_object();
  auto str = [&](const char* k) -> std::string {
    auto* p = o.if_contains(k);
    return p && p->is_string() ? std::string{p->as_string()} : std::string{};
  };
  auto num = [&](const char* k) -> std::int64_t {
    auto* p = o.if_contains(k);
    return p && p->is_int64() ? p->as_int64() : 0;
  };
  stored_grant g;
  g.account = str("account");
  g.provider = str("provider");
  g.client_id = str("client_id");
  g.tenant = str("tenant");
  g.refresh_token = secret{str("refresh_token")};
  g.access_token = secret{str("access_token")};
  g.access_expires_unix = num("access_expires");
  g.scope = str("scope");
  g.state = str("state");
  g.last_error = str("last_error");
  g.updated_unix = num("updated");
  return g;
}

store_key derive_from_password(const secret& password, const unsigned char* salt) {
  store_key k{};
  argon2id_hash_raw(2, 19 * 1024, 1, password.reveal().data(), password.size(), salt, 16, k.data(),
                    k.size());
  return k;
}

bool read_all(const std::filesystem::path& p, std::string& out, int& err) {
  std::ifstream f{p, std::ios::binary};
  if (!f) {
    err = errno;
    return false;
  }
  out.assign(std::istreambuf_iterator<char>{f}, {});
  if (out.size() > max_file) {
    err = EFBIG;
    return false;
  }
  return true;
}

}  // namespace

std::string_view to_string(store_errc e) {
  switch (e) {
    case store_errc::ok: return "ok";
    case store_errc::not_found: return "not found";
    case store_errc::corrupt: return "corrupt";
    case store_errc::wrong_key: return "cannot be decrypted with this key";
    case store_errc::io: return "input/output error";
  }
  return "unknown";
}

token_store::token_store(std::filesystem::path dir) : dir_(std::move(dir)) {}

std::filesystem::path token_store::path_of(std::string_view account) const {
  // File names never show the account: first 16 bytes of SHA-256 of the lower-cased login.
  std::string lower{account};
  for (char& c : lower)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(lower.data(), lower.size(), md, &n, EVP_sha256(), nullptr);
  std::string name;
  for (unsigned i = 0; i < 16; ++i) name += fmt::format("{:02x}", md[i]);
  return dir_ / (name + ".tok");
}

store_key token_store::key_from_file_bytes(const secret& file_bytes, std::string_view account) {
  store_key k{};
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* ctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
  std::string info = "xoauth-proxy token store v1 ";
  info.append(account);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                        const_cast<char*>(file_bytes.reveal().data()),
                                        file_bytes.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end()};
  if (!ctx || EVP_KDF_derive(ctx, k.data(), k.size(), params) != 1)
    throw std::runtime_error("HKDF-SHA-256 is not available in this OpenSSL");
  EVP_KDF_CTX_free(ctx);
  EVP_KDF_free(kdf);
  return k;
}

std::optional<secret> token_store::read_key_file(const std::filesystem::path& p, std::string& why) {
  std::string raw;
  int err = 0;
  if (!read_all(p, raw, err)) {
    why = fmt::format("cannot read {}: {}", p.string(), std::strerror(err));
    return std::nullopt;
  }
  cleanse_guard guard{raw};
  std::string_view v{raw};
  if (v.size() == 32) return secret{std::string{v}};
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r')) v.remove_suffix(1);
  if (v.size() == 64 && v.find_first_not_of("0123456789abcdefABCDEF") == std::string_view::npos) {
    std::string bytes(32, '\0');
    for (std::size_t i = 0; i < 32; ++i)
      bytes[i] = static_cast<char>(std::stoi(std::string{v.substr(2 * i, 2)}, nullptr, 16));
    return secret{std::move(bytes)};
  }
  if (auto b = base64_decode(v); b && b->size() == 32) return secret{std::move(*b)};
  why = fmt::format("{} must hold 32 random bytes (raw, 64 hex digits or base64), e.g. from "
                    "`openssl rand -out {} 32`", p.string(), p.string());
  return std::nullopt;
}

namespace {

struct parsed_file {
  std::string header;  // magic .. salt
  std::uint8_t kind = 0;
  const unsigned char* salt = nullptr;
  const unsigned char* nonce = nullptr;
  std::string_view sealed;
};

bool parse_file(const std::string& raw, parsed_file& f) {
  if (raw.size() < header_size + nonce_size + tag_size) return false;
  if (std::memcmp(raw.data(), magic, 4) != 0 || static_cast<std::uint8_t>(raw[4]) != version)
    return false;
  f.kind = static_cast<std::uint8_t>(raw[5]);
  if (f.kind != kind_key_file && f.kind != kind_password) return false;
  f.header = raw.substr(0, header_size);
  f.salt = reinterpret_cast<const unsigned char*>(raw.data()) + 6;
  f.nonce = reinterpret_cast<const unsigned char*>(raw.data()) + header_size;
  f.sealed = std::string_view{raw}.substr(header_size + nonce_size);
  return true;
}

store_load decrypt(const std::string& raw, std::string_view account, const store_key& key,
                   const std::filesystem::path& path) {
  store_load r;
  parsed_file f;
  if (!parse_file(raw, f)) {
    r.error = store_errc::corrupt;
    r.detail = path.string() + ": not a token store file of this version";
    return r;
  }
  std::string plain;
  cleanse_guard guard{plain};
  if (!gcm_open(key, aad_for(f.header, account), f.sealed, f.nonce, plain)) {
    r.error = store_errc::wrong_key;
    r.detail = path.string() + ": authentication tag does not verify (wrong key, another "
                               "account's file, or damaged)";
    return r;
  }
  r.grant = from_json(plain);
  if (!r.grant) {
    r.error = store_errc::corrupt;
    r.detail = path.string() + ": decrypted content is not a token record";
  }
  return r;
}

}  // namespace

store_load token_store::load(std::string_view account, const store_key& key) const {
  auto path = path_of(account);
  std::string raw;
  int err = 0;
  if (!read_all(path, raw, err)) {
    store_load r;
    r.error = err == ENOENT ? store_errc::not_found : store_errc::io;
    r.detail = path.string() + ": " + std::strerror(err);
    return r;
  }
  return decrypt(raw, account, key, path);
}

store_load token_store::load_with_password(std::string_view account, const secret& password,
                                           password_key* key_out) const {
  auto path = path_of(account);
  std::string raw;
  int err = 0;
  store_load r;
  if (!read_all(path, raw, err)) {
    r.error = err == ENOENT ? store_errc::not_found : store_errc::io;
    r.detail = path.string() + ": " + std::strerror(err);
    return r;
  }
  parsed_file f;
  if (!parse_file(raw, f) || f.kind != kind_password) {
    r.error = store_errc::corrupt;
    r.detail = path.string() + ": not a password-protected token store file";
    return r;
  }
  store_key key = derive_from_password(password, f.salt);
  r = decrypt(raw, account, key, path);
  if (r.grant && key_out) {
    key_out->key = key;
    std::memcpy(key_out->salt.data(), f.salt, key_out->salt.size());
  }
  OPENSSL_cleanse(key.data(), key.size());
  return r;
}

std::optional<password_key> token_store::new_password_key(const secret& password) {
  password_key k;
  if (RAND_bytes(k.salt.data(), static_cast<int>(k.salt.size())) != 1) return std::nullopt;
  k.key = derive_from_password(password, k.salt.data());
  return k;
}

bool token_store::exists(std::string_view account) const {
  std::error_code ec;
  return std::filesystem::exists(path_of(account), ec);
}

store_errc token_store::save_with_password_key(const stored_grant& g, const password_key& k,
                                               std::string& detail, bool replace_unreadable) {
  return write_file(g, k.key, kind_password, k.salt, detail, replace_unreadable, true);
}

store_errc token_store::save(const stored_grant& g, const store_key& key, std::string& detail,
                             bool replace_unreadable) {
  std::array<unsigned char, 16> salt{};
  return write_file(g, key, kind_key_file, salt, detail, replace_unreadable);
}

store_errc token_store::save_with_password(const stored_grant& g, const secret& password,
                                           std::string& detail, bool replace_unreadable) {
  std::array<unsigned char, 16> salt{};
  if (RAND_bytes(salt.data(), static_cast<int>(salt.size())) != 1) {
    detail = "no randomness for the salt";
    return store_errc::io;
  }
  store_key key = derive_from_password(password, salt.data());
  auto r = write_file(g, key, kind_password, salt, detail, replace_unreadable);
  OPENSSL_cleanse(key.data(), key.size());
  return r;
}

store_errc token_store::write_file(const stored_grant& g, const store_key& key, std::uint8_t kind,
                                   const std::array<unsigned char, 16>& salt, std::string& detail,
                                   bool replace_unreadable, bool check_existing_password) {
  namespace fs = std::filesystem;
  auto path = path_of(g.account);
  std::error_code fec;
  fs::create_directories(dir_, fec);
  ::chmod(dir_.c_str(), 0700);
  if (fs::exists(path, fec) && (kind == kind_key_file || check_existing_password)) {
    // Never replace an entry we cannot read without being told to: it may hold the only copy
    // of a refresh token that a different key (or a fixed disk) would recover. A password entry
    // with another salt was written with another password: unreadable with this key.
    store_load existing;
    if (kind == kind_key_file) {
      existing = load(g.account, key);
    } else {
      std::string raw;
      int rerr = 0;
      parsed_file f;
      if (read_all(path, raw, rerr) && parse_file(raw, f) && f.kind == kind_password &&
          std::memcmp(f.salt, salt.data(), salt.size()) == 0) {
        existing = decrypt(raw, g.account, key, path);
      } else {
        existing.error = store_errc::wrong_key;
        existing.detail = path.string() + ": written with another key or password";
      }
    }
    if (existing.error == store_errc::corrupt || existing.error == store_errc::wrong_key) {
      if (!replace_unreadable) {
        detail = existing.detail;
        return existing.error;
      }
      auto stamp = std::chrono::system_clock::now().time_since_epoch() / std::chrono::seconds(1);
      fs::rename(path, path.string() + ".unreadable-" + std::to_string(stamp), fec);
    }
  }
  std::string out{magic, 4};
  out.push_back(static_cast<char>(version));
  out.push_back(static_cast<char>(kind));
  out.append(reinterpret_cast<const char*>(salt.data()), salt.size());
  unsigned char nonce[nonce_size];
  if (RAND_bytes(nonce, nonce_size) != 1) {
    detail = "no randomness for the nonce";
    return store_errc::io;
  }
  std::string header = out;
  out.append(reinterpret_cast<const char*>(nonce), nonce_size);
  std::string plain = to_json(g);
  cleanse_guard guard{plain};
  if (!gcm_seal(key, aad_for(header, g.account), plain, nonce, out)) {
    detail = "AES-256-GCM encryption failed";
    return store_errc::io;
  }
  // Atomic replace: a reader (or a crash) sees the old file or the new one, never half of one.
  auto tmp = path.string() + ".tmp";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    detail = tmp + ": " + std::strerror(errno);
    return store_errc::io;
  }
  bool ok = ::write(fd, out.data(), out.size()) == static_cast<ssize_t>(out.size()) &&
            ::fsync(fd) == 0;
  int werr = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    detail = path.string() + ": " + std::strerror(ok ? errno : werr);
    ::unlink(tmp.c_str());
    return store_errc::io;
  }
  int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return store_errc::ok;
}

}  // namespace xo::auth
