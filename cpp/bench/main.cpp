// splitllm-bench: prompt processing (pp) and token generation (tg) speed of the C++ engine,
// with no Python in the timed loop. Output modelled on llama-bench.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "bench/args.h"
#include "build_info.h"
#include "bench/report.h"
#include "common/error.h"
#include "cpu/matmul.h"
#include "gguf/gguf.h"
#include "model/model.h"

namespace sl::bench {

namespace {

struct ModelInfo {
    std::string path, desc;
    uint64_t size = 0, params = 0;
    bool encoder = false;  // embeddings only (bert, nomic-bert)
    int positions = 0;     // an encoder's learned positions (0: no limit)
};

ModelInfo describe(const std::string & path) {
    GGUFFile f(path);
    ModelInfo info;
    info.path = path;
    std::map<std::string, uint64_t> bytes_by_type;
    for (const GGUFTensor & t : f.tensors()) {
        info.size += t.nbytes;
        info.params += uint64_t(t.nelements());
        if (t.n_dims >= 2) bytes_by_type[qtype_traits(t.type)->name] += t.nbytes;
    }
    std::string main_type = "?";
    uint64_t best = 0;
    for (auto & [name, b] : bytes_by_type)
        if (b > best) best = b, main_type = name;
    const double p = double(info.params);
    char size_label[32];
    if (p >= 1e9)
        std::snprintf(size_label, sizeof size_label, "%.1fB", p / 1e9);
    else
        std::snprintf(size_label, sizeof size_label, "%.0fM", p / 1e6);
    info.desc = f.get_str("general.architecture", "?") + " " + size_label + " " + main_type;
    const Config c = Config::from_gguf(f);
    info.encoder = c.encoder;
    info.positions = c.learned_pos ? c.n_ctx_train : 0;
    return info;
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Evaluates n random tokens at positions [start, start + n) in batches of n_batch
// (logits, or with embd the hidden states, for the last token of each batch only, as in prompt
// processing). An encoder reads each batch as a text of its own, from position 0.
void run_prompt(Model & m, std::mt19937 & rng, int start, int n, int n_batch, bool embd, std::vector<float> & logits) {
    std::uniform_int_distribution<int32_t> tok(0, m.n_vocab() - 1);
    std::vector<int32_t> tokens(n_batch), pos(n_batch), slot(n_batch, 0);
    std::vector<uint8_t> want(n_batch, 0);
    const bool encoder = m.config().encoder;
    for (int i0 = 0; i0 < n; i0 += n_batch) {
        const int b = std::min(n_batch, n - i0);
        for (int i = 0; i < b; ++i) tokens[i] = tok(rng), pos[i] = (encoder ? 0 : start + i0) + i, want[i] = 0;
        want[b - 1] = 1;
        m.decode(tokens.data(), pos.data(), slot.data(), want.data(), b, logits.data(), embd);
    }
}

// Generates n tokens one at a time at positions [start, start + n).
void run_gen(Model & m, std::mt19937 & rng, int start, int n, bool embd, std::vector<float> & logits) {
    std::uniform_int_distribution<int32_t> tok(0, m.n_vocab() - 1);
    int32_t token = tok(rng), slot = 0;
    for (int i = 0; i < n; ++i) {
        const int32_t pos = start + i;
        m.decode(&token, &pos, &slot, nullptr, 1, logits.data(), embd);
        token = tok(rng);
    }
}

struct Test {
    int n_prompt = 0, n_gen = 0, depth = 0;
};

Row run_test(Model & m, const Args & a, int n_batch, bool embd, const Test & t, std::vector<float> & logits) {
    std::mt19937 rng(a.seed);
    auto once = [&](bool warmup) {
        if (t.depth > 0) run_prompt(m, rng, 0, t.depth, n_batch, embd, logits);
        const double t0 = now_s();
        if (t.n_prompt > 0) run_prompt(m, rng, t.depth, warmup ? std::min(t.n_prompt, n_batch) : t.n_prompt, n_batch,
                                       embd, logits);
        else
            run_gen(m, rng, t.depth, warmup ? 1 : t.n_gen, embd, logits);
        return now_s() - t0;
    };
    once(true);
    Row r;
    const int n = t.n_prompt > 0 ? t.n_prompt : t.n_gen;
    for (int i = 0; i < a.reps; ++i) r.samples_ts.push_back(n / once(false));
    r.test = (t.n_prompt > 0 ? "pp" + std::to_string(t.n_prompt) : "tg" + std::to_string(t.n_gen));
    if (t.depth > 0) r.test += " @ d" + std::to_string(t.depth);
    r.embeddings = embd;
    r.n_prompt = t.n_prompt;
    r.n_gen = t.n_gen;
    r.depth = t.depth;
    return r;
}

int run(const Args & a) {
    std::vector<ModelInfo> infos;
    for (const std::string & path : a.models) infos.push_back(describe(path));  // bad files fail early

    std::vector<Test> tests;
    for (int d : a.depth) {
        for (int p : a.n_prompt)
            if (p > 0) tests.push_back({p, 0, d});
        for (int n : a.n_gen)
            if (n > 0) tests.push_back({0, n, d});
    }
    int n_ctx = 256;
    for (const Test & t : tests) n_ctx = std::max(n_ctx, t.depth + t.n_prompt + t.n_gen);
    n_ctx = (n_ctx + 255) / 256 * 256;

    bool show_embd = false;
    for (int e : a.embeddings) show_embd |= e != 0;
    for (const ModelInfo & info : infos) show_embd |= info.encoder;
    Report report(a.output, cpu::cpu_features(), sl::build_commit(), show_embd);
    std::set<std::string> warned;
    for (const ModelInfo & info : infos)
        for (int threads : a.threads)
            for (int ngl : a.n_gpu_layers)
                for (int n_batch : a.n_batch)
                    for (const std::string & ctk : a.type_k)
                        for (const std::string & ctv : a.type_v)
                            for (int embd_arg : a.embeddings) {
                            ModelParams p;
                            p.n_ctx = n_ctx;
                            p.n_batch = n_batch;
                            p.n_threads = threads;
                            p.n_gpu_layers = ngl == 99 ? -1 : ngl;
                            qtype_from_name(ctk.c_str(), &p.type_k);
                            qtype_from_name(ctv.c_str(), &p.type_v);
                            Model m(info.path, p);
                            for (const std::string & w : m.warnings())
                                if (warned.insert(w).second) std::fprintf(stderr, "warning: %s\n", w.c_str());
                            std::string backend = "CPU";
                            for (const Placement & pl : m.placement())
                                if (pl.device != "CPU") backend = "CUDA";
                            // An encoder gives embeddings only: its pp tests run, its tg and depth tests
                            // (which need a cache) are skipped with a warning.
                            const bool encoder = m.config().encoder, embd = encoder || embd_arg != 0;
                            std::vector<float> logits(size_t(std::max(m.n_vocab(), m.n_embd())));
                            for (const Test & t : tests) {
                                if (encoder && (t.n_gen > 0 || t.depth > 0)) {
                                    const std::string w = info.path + ": an encoder has no tg or depth tests";
                                    if (warned.insert(w).second) std::fprintf(stderr, "warning: %s\n", w.c_str());
                                    continue;
                                }
                                if (encoder && info.positions > 0 && std::min(t.n_prompt, n_batch) > info.positions) {
                                    const std::string w = strfmt("%s: pp%d with n_batch %d skipped: texts of more than "
                                                                 "%d tokens are past the model's positions",
                                                                 info.path.c_str(), t.n_prompt, n_batch, info.positions);
                                    if (warned.insert(w).second) std::fprintf(stderr, "warning: %s\n", w.c_str());
                                    continue;
                                }
                                if (a.progress)
                                    std::fprintf(stderr, "splitllm-bench: %s t=%d ngl=%d %s%d d%d\n",
                                                 info.path.c_str(), threads, ngl, t.n_prompt ? "pp" : "tg",
                                                 t.n_prompt ? t.n_prompt : t.n_gen, t.depth);
                                Row r = run_test(m, a, n_batch, embd, t, logits);
                                r.model = info.desc;
                                r.model_path = info.path;
                                r.size = info.size;
                                r.params = info.params;
                                r.backend = backend;
                                r.threads = threads;
                                r.n_gpu_layers = ngl;
                                r.n_batch = n_batch;
                                r.type_k = ctk;
                                r.type_v = ctv;
                                report.add(r);
                            }
                        }
    report.finish();
    return 0;
}

}  // namespace

}  // namespace sl::bench

int main(int argc, char ** argv) {
    using namespace sl::bench;
    Args args;
    try {
        args = parse_args(argc, argv);
    } catch (const UsageError & e) {
        std::fprintf(stderr, "splitllm-bench: error: %s\n\n", e.message.c_str());
        print_usage(argv[0]);
        return 2;
    }
    try {
        return run(args);
    } catch (const sl::GGUFError & e) {
        std::fprintf(stderr, "splitllm-bench: error: %s\n", e.what());
        return 2;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "splitllm-bench: error: %s\n", e.what());
        return 1;
    }
}
