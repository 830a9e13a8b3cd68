#include "bench/report.h"

#include <cmath>
#include <cstdio>
#include <ctime>

namespace sl::bench {

namespace {

std::string json_str(const std::string & s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += char(c);
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += char(c);
        }
    }
    return out + "\"";
}

std::string csv_str(const std::string & s) {
    std::string out = "\"";
    for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
    return out + "\"";
}

std::string human_size(uint64_t b) {
    char buf[32];
    if (b >= (uint64_t(1) << 30))
        std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / (1 << 30));
    else
        std::snprintf(buf, sizeof buf, "%.2f MiB", double(b) / (1 << 20));
    return buf;
}

std::string human_params(uint64_t p) {
    char buf[32];
    if (p >= 1000000000)
        std::snprintf(buf, sizeof buf, "%.2f B", double(p) / 1e9);
    else
        std::snprintf(buf, sizeof buf, "%.2f M", double(p) / 1e6);
    return buf;
}

std::string iso_date() {
    char buf[32];
    const std::time_t t = std::time(nullptr);
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return buf;
}

}  // namespace

double Row::mean() const {
    double s = 0;
    for (double x : samples_ts) s += x;
    return samples_ts.empty() ? 0 : s / double(samples_ts.size());
}

double Row::stdev() const {
    if (samples_ts.size() < 2) return 0;
    const double m = mean();
    double s = 0;
    for (double x : samples_ts) s += (x - m) * (x - m);
    return std::sqrt(s / double(samples_ts.size() - 1));
}

Report::Report(std::string format, std::string cpu_features, std::string commit, bool show_embd)
    : format_(std::move(format)), cpu_(std::move(cpu_features)), commit_(std::move(commit)), show_embd_(show_embd) {}

void Report::add(const Row & r) {
    rows_.push_back(r);
    if (format_ != "md") return;
    if (!header_done_) {
        std::printf("splitllm-bench | commit %s | CPU: %s\n\n", commit_.c_str(), cpu_.c_str());
        std::printf("| %-28s | %10s | %9s | %-7s | %7s | %3s | %7s | %-5s | %-5s |%s %16s | %20s |\n", "model", "size",
                    "params", "backend", "threads", "ngl", "n_batch", "ctk", "ctv", show_embd_ ? " embd |" : "", "test",
                    "t/s");
        std::printf("| %s | %s: | %s: | %s | %s: | %s: | %s: | %s | %s |%s %s: | %s: |\n",
                    std::string(28, '-').c_str(), std::string(9, '-').c_str(), std::string(8, '-').c_str(),
                    std::string(7, '-').c_str(), std::string(6, '-').c_str(), std::string(2, '-').c_str(),
                    std::string(6, '-').c_str(), std::string(5, '-').c_str(), std::string(5, '-').c_str(),
                    show_embd_ ? " ---: |" : "", std::string(15, '-').c_str(), std::string(19, '-').c_str());
        header_done_ = true;
    }
    char ts[64];
    std::snprintf(ts, sizeof ts, "%.2f ± %.2f", r.mean(), r.stdev());
    const std::string embd = show_embd_ ? "    " + std::to_string(r.embeddings) + " |" : "";
    std::printf("| %-28s | %10s | %9s | %-7s | %7d | %3d | %7d | %-5s | %-5s |%s %16s | %20s |\n", r.model.c_str(),
                human_size(r.size).c_str(), human_params(r.params).c_str(), r.backend.c_str(), r.threads,
                r.n_gpu_layers, r.n_batch, r.type_k.c_str(), r.type_v.c_str(), embd.c_str(), r.test.c_str(), ts);
    std::fflush(stdout);
}

void Report::finish() {
    const std::string date = iso_date();
    if (format_ == "json") {
        std::printf("[\n");
        for (size_t i = 0; i < rows_.size(); ++i) {
            const Row & r = rows_[i];
            std::string samples = "[";
            for (size_t j = 0; j < r.samples_ts.size(); ++j)
                samples += (j ? ", " : "") + std::to_string(r.samples_ts[j]);
            samples += "]";
            std::printf(
                "  {\"commit\": %s, \"cpu_info\": %s, \"date\": %s, \"model\": %s, \"model_filename\": %s, "
                "\"model_size\": %llu, \"model_n_params\": %llu, \"backend\": %s, \"n_threads\": %d, "
                "\"n_gpu_layers\": %d, \"n_batch\": %d, \"type_k\": %s, \"type_v\": %s, \"embeddings\": %s, "
                "\"test\": %s, "
                "\"n_prompt\": %d, \"n_gen\": %d, \"n_depth\": %d, \"avg_ts\": %.6f, \"stddev_ts\": %.6f, "
                "\"samples_ts\": %s}%s\n",
                json_str(commit_).c_str(), json_str(cpu_).c_str(), json_str(date).c_str(), json_str(r.model).c_str(),
                json_str(r.model_path).c_str(), (unsigned long long)r.size, (unsigned long long)r.params,
                json_str(r.backend).c_str(), r.threads, r.n_gpu_layers, r.n_batch, json_str(r.type_k).c_str(),
                json_str(r.type_v).c_str(), r.embeddings ? "true" : "false", json_str(r.test).c_str(), r.n_prompt, r.n_gen, r.depth, r.mean(),
                r.stdev(), samples.c_str(), i + 1 < rows_.size() ? "," : "");
        }
        std::printf("]\n");
    } else if (format_ == "csv") {
        std::printf("commit,cpu_info,date,model,model_filename,model_size,model_n_params,backend,n_threads,"
                    "n_gpu_layers,n_batch,type_k,type_v,embeddings,test,n_prompt,n_gen,n_depth,avg_ts,stddev_ts\n");
        for (const Row & r : rows_)
            std::printf("%s,%s,%s,%s,%s,%llu,%llu,%s,%d,%d,%d,%s,%s,%d,%s,%d,%d,%d,%.6f,%.6f\n",
                        csv_str(commit_).c_str(), csv_str(cpu_).c_str(), csv_str(date).c_str(),
                        csv_str(r.model).c_str(), csv_str(r.model_path).c_str(), (unsigned long long)r.size,
                        (unsigned long long)r.params, csv_str(r.backend).c_str(), r.threads, r.n_gpu_layers,
                        r.n_batch, csv_str(r.type_k).c_str(), csv_str(r.type_v).c_str(), r.embeddings,
                        csv_str(r.test).c_str(),
                        r.n_prompt, r.n_gen, r.depth, r.mean(), r.stdev());
    } else if (!rows_.empty()) {
        std::printf("\nbuild: %s, %s\n", commit_.c_str(), date.c_str());
    }
}

}  // namespace sl::bench
