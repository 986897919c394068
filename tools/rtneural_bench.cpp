// RTNeural as a peer in tools/bench_compare.py: the same model as there, a GRU (input 4) and a
// linear head with one output, as RTNeural::ModelT<float, 4, 1, GRULayerT<float, 4, H>,
// DenseT<float, H, 1>>, one forward() per sample, one thread. bench_compare.py builds it (one
// binary per H and backend: -DHSIZE=H, -DRTNEURAL_USE_EIGEN=1 or -DRTNEURAL_USE_XSIMD=1).
//
//   rtn check H weights.bin inputs.bin T out.bin   run T steps, write the T float32 outputs
//   rtn bench H weights.bin N                      mean ns per forward() over N calls
//
// weights.bin, float32, PyTorch layout (gate order r|z|n):
//   w_ih (3H,4) | w_hh (3H,H) | b_ih (3H) | b_hh (3H) | head weight (1,H) | head bias (1)
// converted to RTNeural's layout as RTNeural's own torch_helpers.h loadGRU() does (transpose,
// swap the r and z blocks).
#include <RTNeural/RTNeural.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

constexpr int I = 4;
constexpr int PAD = 16;   // input slots of 16 floats, 64-byte aligned, zero padded: xsimd's input
                          // product loads a whole AVX-512 vector and sums over all its lanes

static std::vector<float> read_file(const char* path, size_t count)
{
    std::vector<float> v(count);
    FILE* f = std::fopen(path, "rb");
    if(!f || std::fread(v.data(), sizeof(float), count, f) != count)
    {
        std::fprintf(stderr, "cannot read %zu floats from %s\n", count, path);
        std::exit(2);
    }
    std::fclose(f);
    return v;
}

template <int H>
using Model = RTNeural::ModelT<float, I, 1, RTNeural::GRULayerT<float, I, H>,
                               RTNeural::DenseT<float, H, 1>>;

template <int H>
static std::unique_ptr<Model<H>> make_model(const char* wpath)
{
    const size_t n = 3 * H * I + 3 * H * H + 3 * H + 3 * H + H + 1;
    auto w = read_file(wpath, n);
    const float* w_ih = w.data();
    const float* w_hh = w_ih + 3 * H * I;
    const float* b_ih = w_hh + 3 * H * H;
    const float* b_hh = b_ih + 3 * H;
    const float* head_w = b_hh + 3 * H;
    const float* head_b = head_w + H;

    // PyTorch gate block g (r=0, z=1, n=2) -> RTNeural block (z=0, r=1, n=2)
    auto dst = [](int g) { return g == 0 ? 1 : (g == 1 ? 0 : 2); };
    std::vector<std::vector<float>> W(I, std::vector<float>(3 * H)), U(H, std::vector<float>(3 * H)),
        B(2, std::vector<float>(3 * H));
    for(int g = 0; g < 3; ++g)
        for(int j = 0; j < H; ++j)
        {
            const int src_row = g * H + j, k = dst(g) * H + j;
            for(int i = 0; i < I; ++i)
                W[i][k] = w_ih[src_row * I + i];
            for(int i = 0; i < H; ++i)
                U[i][k] = w_hh[src_row * H + i];
            B[0][k] = b_ih[src_row];
            B[1][k] = b_hh[src_row];
        }

    std::unique_ptr<Model<H>> m(new Model<H>());
    auto& gru = m->template get<0>();
    gru.setWVals(W);
    gru.setUVals(U);
    gru.setBVals(B);
    auto& head = m->template get<1>();
    head.setWeights(std::vector<std::vector<float>>{std::vector<float>(head_w, head_w + H)});
    head.setBias(head_b);
    m->reset();
    return m;
}

struct Inputs
{
    float* p = nullptr;
    explicit Inputs(size_t count)
    {
        p = static_cast<float*>(std::aligned_alloc(64, count * PAD * sizeof(float)));
        std::memset(p, 0, count * PAD * sizeof(float));
    }
    ~Inputs() { std::free(p); }
    float* at(size_t t) { return p + t * PAD; }
};

template <int H>
static int check(const char* wpath, const char* xpath, int T, const char* opath)
{
    auto m = make_model<H>(wpath);
    auto x = read_file(xpath, (size_t)T * I);
    Inputs in(T);
    for(int t = 0; t < T; ++t)
        std::memcpy(in.at(t), &x[(size_t)t * I], I * sizeof(float));
    std::vector<float> y((size_t)T);
    for(int t = 0; t < T; ++t)
        y[(size_t)t] = m->forward(in.at(t));
    FILE* f = std::fopen(opath, "wb");
    if(!f || std::fwrite(y.data(), sizeof(float), y.size(), f) != y.size())
        return 2;
    std::fclose(f);
    return 0;
}

template <int H>
static int bench(const char* wpath, long N)
{
    auto m = make_model<H>(wpath);
    constexpr size_t NX = 4096;   // varying inputs, cycled
    Inputs in(NX);
    std::mt19937 rng(1234);
    std::normal_distribution<float> nd(0.f, 1.f);
    for(size_t t = 0; t < NX; ++t)
        for(int i = 0; i < I; ++i)
            in.at(t)[i] = nd(rng);

    float sink = 0.f;   // printed, so that the compiler keeps every forward()
    const long warm = N / 10 > 1000 ? N / 10 : 1000;
    for(long k = 0; k < warm; ++k)
        sink += m->forward(in.at(k & (NX - 1)));
    const auto t0 = std::chrono::steady_clock::now();
    for(long k = 0; k < N; ++k)
        sink += m->forward(in.at(k & (NX - 1)));
    const auto t1 = std::chrono::steady_clock::now();
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / (double)N;
    std::printf("%.3f %g\n", ns, (double)sink);
    return 0;
}

#ifndef HSIZE
#error "compile with -DHSIZE=H"
#endif

int main(int argc, char** argv)
{
    if(argc < 3 || std::atoi(argv[2]) != HSIZE)
    {
        std::fprintf(stderr, "this binary is H=%d: check H w x T out | bench H w N\n", HSIZE);
        return 2;
    }
    if(!std::strcmp(argv[1], "check") && argc == 7)
        return check<HSIZE>(argv[3], argv[4], std::atoi(argv[5]), argv[6]);
    if(!std::strcmp(argv[1], "bench") && argc == 5)
        return bench<HSIZE>(argv[3], std::atol(argv[4]));
    std::fprintf(stderr, "usage: check H w x T out | bench H w N\n");
    return 2;
}
