#include "bench/args.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/threadpool.h"
#include "quant/qtype.h"

namespace sl::bench {

namespace {

std::vector<std::string> split(const std::string & s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (true) {
        const size_t comma = s.find(',', start);
        out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

int to_int(const std::string & opt, const std::string & s, int lo, int hi) {
    char * end = nullptr;
    errno = 0;
    const long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end != 0 || errno != 0 || v < lo || v > hi)
        throw UsageError{"option " + opt + ": '" + s + "' is not an integer in [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "]"};
    return int(v);
}

std::vector<int> int_list(const std::string & opt, const std::string & s, int lo, int hi) {
    std::vector<int> out;
    for (const std::string & part : split(s)) out.push_back(to_int(opt, part, lo, hi));
    return out;
}

std::vector<std::string> kv_type_list(const std::string & opt, const std::string & s) {
    std::vector<std::string> out = split(s);
    for (const std::string & t : out) {
        QType q;
        if (!qtype_from_name(t.c_str(), &q) || (q != QType::F16 && q != QType::Q8_0 && q != QType::Q4_0))
            throw UsageError{"option " + opt + ": KV cache type '" + t + "' is not one of f16, q8_0, q4_0"};
    }
    return out;
}

}  // namespace

void print_usage(const char * prog) {
    std::fprintf(stderr,
                 "usage: %s -m MODEL [options]\n"
                 "\n"
                 "Every option takes a comma-separated list (or may be repeated); each combination is one test.\n"
                 "  -m, --model PATH          GGUF model (repeatable)\n"
                 "  -p, --n-prompt N          prompt tokens for the pp test (default 512; 0 skips it)\n"
                 "  -n, --n-gen N             generated tokens for the tg test (default 128; 0 skips it)\n"
                 "  -d, --n-depth N           tokens already in the KV cache before the test (default 0)\n"
                 "  -t, --threads N           CPU threads (default: all hardware threads)\n"
                 "  -ngl, --n-gpu-layers N    layers on the GPU (default 0; -1 or 99: all)\n"
                 "  -b, --batch-size N        tokens per forward pass in pp (default 512)\n"
                 "  -ctk, --cache-type-k T    f16, q8_0, q4_0 (default f16)\n"
                 "  -ctv, --cache-type-v T    f16, q8_0, q4_0 (default f16)\n"
                 "  -embd, --embeddings 0|1   embeddings instead of logits (default 0; an encoder: always,\n"
                 "                            each pp batch one text, no tg or depth)\n"
                 "  -r, --repetitions N       timed runs per test (default 5), after one warm-up run\n"
                 "  -o, --output FMT          md, json or csv (default md)\n"
                 "  --progress                print progress to stderr\n"
                 "  -h, --help                this text\n",
                 prog);
}

Args parse_args(int argc, char ** argv) {
    Args a;
    bool n_prompt_set = false, n_gen_set = false, depth_set = false, ngl_set = false, batch_set = false,
         ctk_set = false, ctv_set = false, embd_set = false;
    // A repeated option appends; the first use replaces the default.
    auto add_ints = [](std::vector<int> & dst, bool & set, const std::vector<int> & v) {
        if (!set) dst.clear();
        set = true;
        dst.insert(dst.end(), v.begin(), v.end());
    };
    auto add_strs = [](std::vector<std::string> & dst, bool & set, const std::vector<std::string> & v) {
        if (!set) dst.clear();
        set = true;
        dst.insert(dst.end(), v.begin(), v.end());
    };
    for (int i = 1; i < argc; ++i) {
        const std::string opt = argv[i];
        if (opt == "-h" || opt == "--help") {
            print_usage(argv[0]);
            std::exit(0);
        }
        if (opt == "--progress") {
            a.progress = true;
            continue;
        }
        if (i + 1 >= argc) throw UsageError{"option " + opt + " needs a value"};
        const std::string val = argv[++i];
        bool dummy = true;
        if (opt == "-m" || opt == "--model") {
            for (const std::string & m : split(val)) a.models.push_back(m);
        } else if (opt == "-p" || opt == "--n-prompt") {
            add_ints(a.n_prompt, n_prompt_set, int_list(opt, val, 0, 1 << 20));
        } else if (opt == "-n" || opt == "--n-gen") {
            add_ints(a.n_gen, n_gen_set, int_list(opt, val, 0, 1 << 20));
        } else if (opt == "-d" || opt == "--n-depth") {
            add_ints(a.depth, depth_set, int_list(opt, val, 0, 1 << 22));
        } else if (opt == "-t" || opt == "--threads") {
            add_ints(a.threads, dummy, int_list(opt, val, 1, 1024));
        } else if (opt == "-ngl" || opt == "--n-gpu-layers") {
            add_ints(a.n_gpu_layers, ngl_set, int_list(opt, val, -1, 100000));
        } else if (opt == "-b" || opt == "--batch-size") {
            add_ints(a.n_batch, batch_set, int_list(opt, val, 1, 1 << 16));
        } else if (opt == "-ctk" || opt == "--cache-type-k") {
            add_strs(a.type_k, ctk_set, kv_type_list(opt, val));
        } else if (opt == "-ctv" || opt == "--cache-type-v") {
            add_strs(a.type_v, ctv_set, kv_type_list(opt, val));
        } else if (opt == "-embd" || opt == "--embeddings") {
            add_ints(a.embeddings, embd_set, int_list(opt, val, 0, 1));
        } else if (opt == "-r" || opt == "--repetitions") {
            a.reps = to_int(opt, val, 1, 100000);
        } else if (opt == "-o" || opt == "--output") {
            if (val != "md" && val != "json" && val != "csv")
                throw UsageError{"option -o: output format '" + val + "' is not one of md, json, csv"};
            a.output = val;
        } else if (opt == "-s" || opt == "--seed") {
            a.seed = unsigned(to_int(opt, val, 0, 0x7fffffff));
        } else {
            throw UsageError{"unknown option '" + opt + "'"};
        }
    }
    if (a.models.empty()) throw UsageError{"no model given (-m MODEL)"};
    if (a.threads.empty()) a.threads.push_back(hardware_threads());
    return a;
}

}  // namespace sl::bench
