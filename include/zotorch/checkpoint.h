// Crash-safe checkpoint files (docs/reliability.md): torch::save bytes inside a small envelope
// (magic, format version, payload length, CRC-32) written atomically (temp file, fsync, rename), so
// that a killed job or a damaged disk gives a clear error on resume, never a corrupt or lost run.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>
#include <torch/utils.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#if defined(_WIN32)
#include <filesystem>
#else
#include <fcntl.h>
#include <unistd.h>
#endif

namespace zotorch {

namespace detail {

// The envelope, all integers little-endian:
//   header  (16 bytes): magic "ZOTORCH\x1a", format version (u32), reserved (u32, 0)
//   payload (n bytes) : what torch::serialize::OutputArchive::save_to writes
//   trailer (16 bytes): n (u64), CRC-32 of the payload (u32), "ZEND"
// The length and CRC trail the payload so that save streams it to disk without holding a copy.
constexpr char kCheckpointMagic[8] = {'Z', 'O', 'T', 'O', 'R', 'C', 'H', '\x1a'};
constexpr char kCheckpointEnd[4] = {'Z', 'E', 'N', 'D'};
constexpr uint32_t kCheckpointVersion = 1;
constexpr size_t kCheckpointHeaderSize = 16;
constexpr size_t kCheckpointTrailerSize = 16;

/// CRC-32 tables for slicing by 8 (reflected polynomial 0xEDB88320, as zlib and PNG): table[0] is
/// the byte table, table[k][b] the CRC of byte b followed by k zero bytes, so 8 bytes cost 8 lookups.
struct Crc32Tables {
  uint32_t table[8][256];
  constexpr Crc32Tables() : table() {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t c = b;
      for (int bit = 0; bit < 8; ++bit) c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
      table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; ++b) {
      for (int k = 1; k < 8; ++k) table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xFFu];
    }
  }
};

inline const Crc32Tables& crc32_tables() {
  static constexpr Crc32Tables tables{};
  return tables;
}

/// Continues a CRC-32 over `size` more bytes; start from 0. crc32_update(0, "123456789", 9) == 0xCBF43926.
inline uint32_t crc32_update(uint32_t crc, const void* data, size_t size) {
  const auto& t = crc32_tables().table;
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  while (size >= 8) {
    // Byte-wise loads keep this independent of alignment and endianness.
    const uint32_t lo = crc ^ (uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24);
    crc = t[7][lo & 0xFFu] ^ t[6][(lo >> 8) & 0xFFu] ^ t[5][(lo >> 16) & 0xFFu] ^ t[4][lo >> 24] ^ t[3][p[4]] ^
          t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
    p += 8;
    size -= 8;
  }
  while (size-- > 0) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFFu];
  return ~crc;
}

inline void put_le(unsigned char* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<unsigned char>(value >> (8 * i));
}

inline uint64_t get_le(const unsigned char* in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= uint64_t{in[i]} << (8 * i);
  return value;
}

/// Reads exactly `size` bytes at `offset` of the checkpoint being verified, or throws.
using ReadAt = std::function<void(uint64_t offset, void* out, size_t size)>;

/// Verifies the envelope of a checkpoint of `size` bytes read through `read_at` and returns the
/// payload length (the payload starts at kCheckpointHeaderSize). `what` names the file in errors.
inline uint64_t verify_envelope(uint64_t size, const ReadAt& read_at, const std::string& what) {
  unsigned char header[kCheckpointHeaderSize] = {};
  read_at(0, header, static_cast<size_t>(std::min<uint64_t>(size, kCheckpointHeaderSize)));
  TORCH_CHECK(size >= sizeof(kCheckpointMagic) && std::memcmp(header, kCheckpointMagic, sizeof(kCheckpointMagic)) == 0,
              "zotorch::load_checkpoint: ", what, " is not a zotorch checkpoint (", size,
              " bytes, no ZOTORCH header); write checkpoints with zotorch::save_checkpoint, or read a plain "
              "torch::save file with torch::load");
  TORCH_CHECK(size >= kCheckpointHeaderSize + kCheckpointTrailerSize, "zotorch::load_checkpoint: ", what,
              " is truncated: ", size, " bytes, less than an empty checkpoint's ",
              kCheckpointHeaderSize + kCheckpointTrailerSize, ". Resume from an earlier checkpoint");
  const uint64_t version = get_le(header + 8, 4);
  const uint64_t reserved = get_le(header + 12, 4);
  TORCH_CHECK(version == kCheckpointVersion && reserved == 0, "zotorch::load_checkpoint: ", what,
              " has envelope format version ", version, " with flags ", reserved, ", this zotorch reads version ",
              kCheckpointVersion, " without flags; the header is damaged, or the file needs the zotorch that wrote it");
  unsigned char trailer[kCheckpointTrailerSize];
  read_at(size - kCheckpointTrailerSize, trailer, kCheckpointTrailerSize);
  const uint64_t have = size - kCheckpointHeaderSize - kCheckpointTrailerSize;
  const uint64_t length = get_le(trailer, 8);
  TORCH_CHECK(std::memcmp(trailer + 12, kCheckpointEnd, sizeof(kCheckpointEnd)) == 0 && length == have,
              "zotorch::load_checkpoint: ", what, " is truncated or has bytes appended (", size,
              " bytes; its end marker is missing or names another length). Resume from an earlier checkpoint");
  const auto stored = static_cast<uint32_t>(get_le(trailer + 8, 4));
  uint32_t computed = 0;
  std::vector<unsigned char> chunk(static_cast<size_t>(std::min<uint64_t>(have, uint64_t{1} << 20)));
  for (uint64_t done = 0; done < have;) {
    const auto n = static_cast<size_t>(std::min<uint64_t>(have - done, chunk.size()));
    read_at(kCheckpointHeaderSize + done, chunk.data(), n);
    computed = crc32_update(computed, chunk.data(), n);
    done += n;
  }
  TORCH_CHECK(stored == computed, "zotorch::load_checkpoint: ", what, " is corrupted: the CRC-32 of its ", have,
              " payload bytes is ", computed, ", its trailer says ", stored, ". Resume from an earlier checkpoint");
  return have;
}

inline std::string errno_text(int error) {
  return std::string(std::strerror(error)) + " (errno " + std::to_string(error) + ")";
}

/// A name no other writer uses, in the directory of `path` (rename is atomic only within one file
/// system): hidden, with the process id and a per-process counter (saves from several threads).
inline std::string temporary_name(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
#if defined(_WIN32)
  const long pid = 0;
#else
  const long pid = static_cast<long>(::getpid());
#endif
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  return dir + "." + base + ".tmp." + std::to_string(pid) + "." + std::to_string(counter.fetch_add(1));
}

inline std::string parent_directory(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace detail

/// The sink write_file_atomically hands its producer: returns false once a write failed (the
/// error is reported when the producer returns), so producers that are C callbacks need not throw.
using WriteBytes = std::function<bool(const void* data, size_t size)>;

/// Writes a file so that `path` holds either its old content or all of the new one, whenever the
/// process dies or the machine loses power: `produce(write)` writes the bytes into a temp file in
/// the same directory, which is fsync'ed and renamed over `path`; then the directory is fsync'ed.
/// On any failure (a write, a throwing producer) c10::Error is thrown, the temp file is removed and
/// `path` is untouched. A process killed mid-write leaves a hidden `.NAME.tmp.PID.N` that nothing reads.
inline void write_file_atomically(const std::string& path, const std::function<void(const WriteBytes&)>& produce) {
  TORCH_CHECK(!path.empty(), "zotorch::write_file_atomically: the path is empty; name the file to write");
  const std::string temp = detail::temporary_name(path);
#if defined(_WIN32)
  // No fsync here: std::filesystem::rename replaces the target (MoveFileExW), the rest is best effort.
  bool ok = true;
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    TORCH_CHECK(out, "zotorch::write_file_atomically: cannot create ", temp, "; check that the directory exists and is writable");
    try {
      produce([&](const void* data, size_t size) {
        out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
        ok = ok && static_cast<bool>(out);
        return ok;
      });
      out.flush();
      ok = ok && static_cast<bool>(out);
    } catch (...) {
      out.close();
      std::remove(temp.c_str());
      throw;
    }
  }
  std::error_code error;
  if (ok) std::filesystem::rename(temp, path, error);
  if (!ok || error) std::remove(temp.c_str());
  TORCH_CHECK(ok, "zotorch::write_file_atomically: writing ", temp, " failed (disk full?); ", path, " was left as it was");
  TORCH_CHECK(!error, "zotorch::write_file_atomically: cannot rename ", temp, " to ", path, ": ", error.message());
#else
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  TORCH_CHECK(fd >= 0, "zotorch::write_file_atomically: cannot create ", temp, ": ", detail::errno_text(errno),
              "; check that the directory exists and is writable");
  int write_error = 0;
  try {
    produce([&](const void* data, size_t size) {
      const char* p = static_cast<const char*>(data);
      while (size > 0 && write_error == 0) {
        const ssize_t written = ::write(fd, p, size);
        if (written < 0) {
          if (errno != EINTR) write_error = errno;
          continue;
        }
        p += written;
        size -= static_cast<size_t>(written);
      }
      return write_error == 0;
    });
    TORCH_CHECK(write_error == 0, "zotorch::write_file_atomically: writing ", temp, " failed: ",
                detail::errno_text(write_error), "; ", path, " was left as it was");
    // The data must be on disk before the name points at it, or a power cut could leave an empty file.
    TORCH_CHECK(::fsync(fd) == 0, "zotorch::write_file_atomically: fsync of ", temp, " failed: ",
                detail::errno_text(errno), "; ", path, " was left as it was");
    const int closed = ::close(fd);
    fd = -1;
    TORCH_CHECK(closed == 0, "zotorch::write_file_atomically: closing ", temp, " failed: ", detail::errno_text(errno),
                "; ", path, " was left as it was");
    TORCH_CHECK(::rename(temp.c_str(), path.c_str()) == 0, "zotorch::write_file_atomically: cannot rename ", temp,
                " to ", path, ": ", detail::errno_text(errno), "; ", path, " was left as it was");
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(temp.c_str());
    // A producer that gave up because the sink failed (LibTorch's writer throws its own vaguer
    // error on a short count) reports the sink's error, which names errno.
    TORCH_CHECK(write_error == 0, "zotorch::write_file_atomically: writing ", temp, " failed: ",
                detail::errno_text(write_error), "; ", path, " was left as it was");
    throw;
  }
  // Make the rename itself durable. Some file systems refuse fsync on a directory; the new file is
  // in place by then, so that is not an error.
  const int dir = ::open(detail::parent_directory(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
#endif
}

/// Writes `bytes` to `path` atomically (see the overload above).
inline void write_file_atomically(const std::string& path, const std::string& bytes) {
  write_file_atomically(path, [&](const WriteBytes& write) { write(bytes.data(), bytes.size()); });
}

/// Serialises `archive` into the checkpoint envelope through `write` (what save_checkpoint writes).
inline void write_checkpoint(torch::serialize::OutputArchive& archive, const WriteBytes& write) {
  unsigned char header[detail::kCheckpointHeaderSize] = {};
  std::memcpy(header, detail::kCheckpointMagic, sizeof(detail::kCheckpointMagic));
  detail::put_le(header + 8, detail::kCheckpointVersion, 4);
  if (!write(header, sizeof(header))) return;
  uint64_t length = 0;
  uint32_t crc = 0;
  bool ok = true;
  // Never report a short write to LibTorch: its zip writer then throws from its destructor, which
  // calls std::terminate (LibTorch 2.15, docs/reliability.md). Swallow the rest instead; the sink
  // remembers its error and write_file_atomically reports it once save_to has returned.
  archive.save_to([&](const void* data, size_t size) -> size_t {
    ok = ok && write(data, size);
    if (ok) {
      crc = detail::crc32_update(crc, data, size);
      length += size;
    }
    return size;
  });
  if (!ok) return;
  unsigned char trailer[detail::kCheckpointTrailerSize] = {};
  detail::put_le(trailer, length, 8);
  detail::put_le(trailer + 8, crc, 4);
  std::memcpy(trailer + 12, detail::kCheckpointEnd, sizeof(detail::kCheckpointEnd));
  write(trailer, sizeof(trailer));
}

/// The checkpoint bytes of `archive`, in memory (save_checkpoint writes the same bytes to a file).
inline std::string checkpoint_bytes(torch::serialize::OutputArchive& archive) {
  std::string bytes;
  write_checkpoint(archive, [&](const void* data, size_t size) {
    bytes.append(static_cast<const char*>(data), size);
    return true;
  });
  return bytes;
}

/// Saves an archive to `path` as a zotorch checkpoint: the archive's torch::save bytes inside an
/// envelope with their length and CRC-32, written atomically (write_file_atomically).
inline void save_checkpoint(torch::serialize::OutputArchive& archive, const std::string& path) {
  write_file_atomically(path, [&](const WriteBytes& write) { write_checkpoint(archive, write); });
}

/// Saves the optimizer's state (what torch::save(optimizer, ...) writes) as a zotorch checkpoint.
inline void save_checkpoint(const torch::optim::Optimizer& optimizer, const std::string& path) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  save_checkpoint(archive, path);
}

/// Saves a model and its optimizer in one checkpoint, so that a resume never pairs the parameters
/// of one step with the optimizer state of another. The archive holds "model" (in
/// torch::nn::Module::save's layout) and "optimizer" (the optimizer's save()).
inline void save_checkpoint(const torch::nn::Module& model, const torch::optim::Optimizer& optimizer,
                            const std::string& path) {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  save_checkpoint(archive, path);
}

/// Verifies checkpoint bytes held in memory (`what` names them in errors) and loads their payload
/// into `archive`. A damaged envelope throws c10::Error before LibTorch's reader sees any byte.
inline void load_checkpoint_bytes(torch::serialize::InputArchive& archive, const std::string& bytes,
                                  const std::string& what = "the checkpoint") {
  const uint64_t length = detail::verify_envelope(
      bytes.size(), [&](uint64_t offset, void* out, size_t size) { std::memcpy(out, bytes.data() + offset, size); }, what);
  archive.load_from(bytes.data() + detail::kCheckpointHeaderSize, static_cast<size_t>(length));
}

/// Loads a checkpoint written by save_checkpoint(archive, path) into `archive`. The file is
/// verified (length, CRC-32) in one streaming pass before LibTorch reads it.
inline void load_checkpoint(torch::serialize::InputArchive& archive, const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  TORCH_CHECK(in, "zotorch::load_checkpoint: cannot open '", path, "': ", std::strerror(errno), "; check the path");
  const auto end = in.tellg();
  TORCH_CHECK(end >= 0, "zotorch::load_checkpoint: cannot tell the size of '", path, "'");
  const auto size = static_cast<uint64_t>(end);
  const detail::ReadAt read_at = [&](uint64_t offset, void* out, size_t n) {
    in.clear();
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(static_cast<char*>(out), static_cast<std::streamsize>(n));
    TORCH_CHECK(in && static_cast<size_t>(in.gcount()) == n, "zotorch::load_checkpoint: reading '", path,
                "' failed at byte ", offset, " (did the file change while it was read?)");
  };
  const uint64_t length = detail::verify_envelope(size, read_at, "'" + path + "'");
  // LibTorch's reader calls this from its zip code: report a failed read by a short count, not by
  // unwinding through it, and name the cause afterwards.
  bool read_failed = false;
  try {
    archive.load_from(
        [&](uint64_t pos, void* out, size_t n) -> size_t {
          if (pos >= length || read_failed) return 0;
          n = static_cast<size_t>(std::min<uint64_t>(n, length - pos));
          in.clear();
          in.seekg(static_cast<std::streamoff>(detail::kCheckpointHeaderSize + pos));
          in.read(static_cast<char*>(out), static_cast<std::streamsize>(n));
          if (!in || static_cast<size_t>(in.gcount()) != n) read_failed = true;
          return read_failed ? 0 : n;
        },
        [&]() -> size_t { return static_cast<size_t>(length); });
  } catch (const std::exception&) {
    TORCH_CHECK(!read_failed, "zotorch::load_checkpoint: reading '", path,
                "' failed after its checksum was verified (did the file change while it was read?)");
    throw;
  }
}

/// Loads the optimizer state saved by save_checkpoint(optimizer, path). A damaged file throws, and
/// zotorch's optimizers are then left exactly as they were (their load() reads into a scratch copy).
inline void load_checkpoint(torch::optim::Optimizer& optimizer, const std::string& path) {
  torch::serialize::InputArchive archive;
  load_checkpoint(archive, path);
  optimizer.load(archive);
}

namespace detail {

/// Whether every element that `t`'s sizes, strides and offset address lies inside its storage.
/// LibTorch's unpickler takes the storage's length and the tensor's shape from separate fields of the
/// file and never checks one against the other, so a damaged archive can describe a tensor whose
/// elements lie past its storage or whose storage has no data at all (docs/reliability.md
/// "Fuzzing checkpoint loading"); copying from one reads memory the tensor does not own.
inline bool addresses_only_its_storage(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  if (!t.has_storage() || t.storage_offset() < 0 || t.storage().data() == nullptr) return false;
  int64_t last = t.storage_offset();  // the largest element index the tensor addresses
  for (int64_t d = 0; d < t.dim(); ++d) {
    int64_t reach = 0;
    if (t.stride(d) < 0 || __builtin_mul_overflow(t.size(d) - 1, t.stride(d), &reach) ||
        __builtin_add_overflow(last, reach, &last)) {
      return false;
    }
  }
  int64_t end_bytes = 0;
  if (__builtin_add_overflow(last, 1, &last) || __builtin_mul_overflow(last, t.element_size(), &end_bytes)) return false;
  return static_cast<uint64_t>(end_bytes) <= t.storage().nbytes();
}

/// Reads every parameter and buffer of `module` (recursively, in Module::save's layout) into
/// `staged` without touching the module, checking names, shapes and dtypes.
inline void stage_module(const torch::nn::Module& module, torch::serialize::InputArchive& archive,
                         const std::string& prefix, std::vector<std::pair<at::Tensor, at::Tensor>>& staged) {
  auto stage = [&](const std::string& key, const at::Tensor& target, bool is_buffer) {
    at::Tensor value;
    TORCH_CHECK(archive.try_read(key, value, is_buffer), "zotorch::load_checkpoint: the checkpoint has no ",
                is_buffer ? "buffer " : "parameter ", prefix + key, "; was it saved from this model?");
    TORCH_CHECK(value.sizes() == target.sizes() && value.scalar_type() == target.scalar_type(),
                "zotorch::load_checkpoint: ", prefix + key, " is ", value.scalar_type(), value.sizes(),
                " in the checkpoint but ", target.scalar_type(), target.sizes(),
                " in the model; build the model as it was when the checkpoint was saved");
    // The copy happens after the optimizer has loaded, so it must not be able to fail then.
    TORCH_CHECK(value.layout() == at::kStrided && !value.is_quantized() &&
                    (value.device().is_cpu() || value.device() == target.device()),
                "zotorch::load_checkpoint: ", prefix + key, " is a ", value.layout(), " tensor on ", value.device(),
                " in the checkpoint; expected a dense tensor on the CPU or on ", target.device());
    const size_t claimed = value.has_storage() ? value.storage().nbytes() : 0;
    TORCH_CHECK(value.numel() == 0 || (value.has_storage() && value.storage().data() != nullptr),
                "zotorch::load_checkpoint: ", prefix + key, " in the checkpoint claims ", claimed,
                " bytes of data, but the file holds none for it; the file is damaged, load an earlier checkpoint");
    TORCH_CHECK(addresses_only_its_storage(value), "zotorch::load_checkpoint: ", prefix + key,
                " in the checkpoint addresses elements past the end of its stored data (offset ",
                value.storage_offset(), ", strides ", value.strides(), ", ", claimed,
                " bytes stored); the file is damaged, load an earlier checkpoint");
    staged.emplace_back(target, value);
  };
  for (const auto& item : module.named_parameters(/*recurse=*/false)) stage(item.key(), item.value(), false);
  for (const auto& item : module.named_buffers(/*recurse=*/false)) stage(item.key(), item.value(), true);
  for (const auto& child : module.named_children()) {
    torch::serialize::InputArchive child_archive;
    TORCH_CHECK(archive.try_read(child.key(), child_archive), "zotorch::load_checkpoint: the checkpoint has no submodule ",
                prefix + child.key(), "; was it saved from this model?");
    stage_module(*child.value(), child_archive, prefix + child.key() + ".", staged);
  }
}

/// The all-or-nothing load of a model and its optimizer from an archive that `what` names.
inline void load_model_and_optimizer(torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                                     torch::serialize::InputArchive& archive, const std::string& what) {
  torch::serialize::InputArchive model_archive, optimizer_archive;
  TORCH_CHECK(archive.try_read("model", model_archive) && archive.try_read("optimizer", optimizer_archive),
              "zotorch::load_checkpoint: ", what,
              " holds no model and optimizer; it was not written by zotorch::save_checkpoint(model, optimizer, "
              "path). Use load_checkpoint(optimizer, path) for an optimizer alone");
  std::vector<std::pair<at::Tensor, at::Tensor>> staged;
  stage_module(model, model_archive, "", staged);
  optimizer.load(optimizer_archive);
  torch::NoGradGuard no_grad;
  for (auto& [target, value] : staged) target.copy_(value);
}

}  // namespace detail

/// Loads a model and its optimizer saved by save_checkpoint(model, optimizer, path). All or nothing:
/// every tensor is read and checked, then the optimizer is loaded, and only then are the parameters
/// and buffers overwritten (in place, so that the optimizer keeps pointing at them).
inline void load_checkpoint(torch::nn::Module& model, torch::optim::Optimizer& optimizer, const std::string& path) {
  torch::serialize::InputArchive archive;
  load_checkpoint(archive, path);
  detail::load_model_and_optimizer(model, optimizer, archive, "'" + path + "'");
}

}  // namespace zotorch
