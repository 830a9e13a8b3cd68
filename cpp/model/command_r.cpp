// Three llama-like decoders as llama.cpp's src/models/<arch>.cpp read and run them:
// - command-r (Cohere Command-R 35B, Command R+ 104B, Aya 23): cohere2's block without windows: one
//   LayerNorm (no bias) feeding attention and feed-forward in parallel (x += attn(h) + ffn(h)), the
//   interleaved rotation on every layer, the output tied to the embedding, logits times the optional
//   logit_scale; from 64 layers on (Command R+) each query and key head LayerNormed before the
//   rotation, with a weight row per head.
// - exaone (EXAONE 3.0 / 3.5): llama with the NEOX rotation (llama3's rope_freqs where the file has
//   them), output optional (tied).
// - internlm2 (InternLM2 / 2.5): llama (its converter splits and permutes wqkv), output required.
// None has an attention-output bias (config.cpp's table); q/k/v biases are read where present.
#include "model/command_r.h"

#include <cmath>

#include "common/error.h"
#include "common/threadpool.h"
#include "model/config_read.h"
#include "model/weights_load.h"

namespace sl {

void Config::read_llamalike(const GGUFFile & f) {
    if (arch != Arch::CommandR && arch != Arch::Exaone && arch != Arch::InternLM2) return;
    const std::string a = arch_name + ".";
    const char * path = f.path().c_str();
    if (arch == Arch::CommandR) {  // (attention.layer_norm_epsilon: required by from_gguf)
        layer_norm = true;
        parallel_ffn = true;
        const float scale = get_positive(f, a + "logit_scale", 0.0, true);  // (absent or 0: none, as llama.cpp)
        logit_scale = scale > 0 ? 1.0f / scale : 1.0f;
        qk_norm_heads = n_layer >= 64;
        n_swa = 0;  // (llama.cpp's command-r reads no window)
    } else if (!f.find(a + "attention.layer_norm_rms_epsilon")) {
        throw GGUFError(strfmt("%s: metadata '%sattention.layer_norm_rms_epsilon' is missing", path, a.c_str()));
    }
    if (arch != Arch::CommandR && n_rot != head_dim)  // (llama.cpp asserts it)
        throw GGUFError(strfmt("%s: metadata '%srope.dimension_count' = %d: %s rotates whole heads (%d)", path,
                               a.c_str(), n_rot, arch_name.c_str(), head_dim));
    if (arch != Arch::Exaone && q_dim() != n_embd)  // (llama.cpp's shapes: attn_q and attn_output n_embd wide)
        throw GGUFError(strfmt("%s: metadata '%sattention.key_length' = %d: %s needs head_count x key_length = "
                               "embedding_length (%d x %d != %d)", path, a.c_str(), head_dim, arch_name.c_str(),
                               n_head, head_dim, n_embd));
}

void check_llamalike_tensors(const GGUFFile & f, const Config & c) {
    if (c.arch != Arch::CommandR && c.arch != Arch::Exaone && c.arch != Arch::InternLM2) return;
    const char * path = f.path().c_str();
    if (c.arch == Arch::CommandR && f.find_tensor("output.weight"))
        throw GGUFError(strfmt("%s: tensor 'output.weight' is not expected: command-r ties its output layer to "
                               "token_embd.weight", path));
    if (c.arch == Arch::InternLM2 && !f.find_tensor("output.weight"))
        throw GGUFError(strfmt("%s: tensor 'output.weight' is missing (internlm2 does not tie it to the embedding)",
                               path));
    if (c.arch != Arch::Exaone && f.find_tensor("rope_freqs.weight"))
        throw GGUFError(strfmt("%s: tensor 'rope_freqs.weight' is not expected: llama.cpp's %s reads no rotary "
                               "factors", path, c.arch_name.c_str()));
}

void load_command_r_qk_norms(const GGUFFile & f, const Config & c, const std::string & b, LayerWeights & L) {
    const std::string q = b + "attn_q_norm.weight", k = b + "attn_k_norm.weight";
    if (!c.qk_norm_heads) {
        for (const std::string & name : {q, k})
            if (f.find_tensor(name))
                throw GGUFError(strfmt("%s: tensor '%s' is not expected: llama.cpp's command-r reads query and key "
                                       "norms only in models of 64 layers or more (this one has %d)",
                                       f.path().c_str(), name.c_str(), c.n_layer));
        return;
    }
    auto rows = [&](const std::string & name, int n_heads) {
        const GGUFTensor & t = require(f, c, name, c.head_dim, n_heads);
        if (t.type != QType::F32)
            throw GGUFError(strfmt("%s: tensor '%s' has type %s, expected F32", f.path().c_str(), name.c_str(),
                                   qtype_traits(t.type)->name));
        return reinterpret_cast<const float *>(t.data);
    };
    L.attn_q_norm = rows(q, c.n_head);
    L.attn_k_norm = rows(k, c.n_head_kv);
}

void command_r_qk_norm(ThreadPool & pool, const Config & c, const LayerWeights & L, float * q, float * k, int n) {
    const int hd = c.head_dim;
    // (row r of a token's heads: head r % n_heads, its weights at (r % n_heads) * hd)
    auto heads = [&](float * x, const float * w, int n_heads) {
        pool.parallel_for(int64_t(n) * n_heads, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
                float * y = x + r * hd;
                const float * g = w + (r % n_heads) * hd;
                double sum = 0;
                for (int i = 0; i < hd; ++i) sum += y[i];
                const float mean = float(sum / hd);
                double ss = 0;
                for (int i = 0; i < hd; ++i) ss += double(y[i] - mean) * (y[i] - mean);
                const float scale = float(1.0 / std::sqrt(ss / hd + double(c.rms_eps)));
                for (int i = 0; i < hd; ++i) y[i] = (y[i] - mean) * scale * g[i];
            }
        });
    };
    heads(q, L.attn_q_norm, c.n_head);
    heads(k, L.attn_k_norm, c.n_head_kv);
}

}  // namespace sl
