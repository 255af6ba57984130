// ONNX Runtime front end, run on ORT's intra-op pool via KernelContext_ParallelFor:
//   ai.mlprune::BlockSparseLinear(X, values, row_ptr, col_idx, [bias], [residual])
//   ai.mlprune::BlockSparseLinearInt8(X, values, row_ptr, col_idx, w_scale, w_sum, [bias], [residual])
// both with attributes out_features and activation ("none" or "gelu", optional).
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "block_sparse_linear.h"

namespace {

constexpr const char* kDomain = "ai.mlprune";
constexpr ONNXTensorElementDataType kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr ONNXTensorElementDataType kInt64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;

OrtStatusPtr error(const char* op, const std::string& msg) {
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (std::string(op) + ": " + msg).c_str());
}

// glibc answers hardware_concurrency() by reading /sys/devices/system/cpu/online: once per
// call, that was 6 of the 12 us an empty-matrix call took.
int64_t max_parts() {
  static const int64_t cores = std::max<unsigned>(1, std::thread::hardware_concurrency());
  return cores;
}

template <class Plan>
void run_part(void* plan, size_t part) {
  static_cast<const Plan*>(plan)->run_part(static_cast<int64_t>(part));
}

int64_t element_count(const Ort::ConstValue& v) {
  return static_cast<int64_t>(v.GetTensorTypeAndShapeInfo().GetElementCount());
}

// ---- what each precision adds to the shared plumbing ----

struct Fp32 {
  using Args = mlprune::BsrLinearArgs;
  using Plan = mlprune::Plan;
  static constexpr const char* kName = "BlockSparseLinear";
  static constexpr size_t kInputs = 6;  // X, values, row_ptr, col_idx, bias, residual
  static constexpr int kBias = 4;
  static ONNXTensorElementDataType input_type(size_t i) { return i == 2 || i == 3 ? kInt64 : kFloat; }

  struct State {};
  static std::string read(Ort::KernelContext& ctx, State&, Args& a, int64_t bias_len) {
    const Ort::ConstValue values = ctx.GetInput(1);
    const std::vector<int64_t> vs = values.GetTensorTypeAndShapeInfo().GetShape();
    a.values = values.GetTensorData<float>();
    a.block = vs.size() == 3 ? vs[1] : 0;
    return mlprune::validate(a, vs, element_count(ctx.GetInput(2)), a.nnzb, bias_len);
  }
};

struct Int8 {
  using Args = mlprune::BsrInt8Args;
  using Plan = mlprune::Int8Plan;
  static constexpr const char* kName = "BlockSparseLinearInt8";
  static constexpr size_t kInputs = 8;  // X, values, row_ptr, col_idx, w_scale, w_sum, bias, residual
  static constexpr int kBias = 6;
  static ONNXTensorElementDataType input_type(size_t i) {
    switch (i) {
      case 1: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
      case 2:
      case 3: return kInt64;
      case 5: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
      default: return kFloat;
    }
  }

  // Weights are initializers: their range is checked once, not on every call (a session may
  // run on several threads at once, hence the atomic).
  struct State {
    std::atomic<const int8_t*> checked{nullptr};
  };
  static std::string read(Ort::KernelContext& ctx, State& state, Args& a, int64_t bias_len) {
    const Ort::ConstValue values = ctx.GetInput(1), w_scale = ctx.GetInput(4), w_sum = ctx.GetInput(5);
    if (!w_scale || !w_sum) return "w_scale and w_sum are required";
    const std::vector<int64_t> vs = values.GetTensorTypeAndShapeInfo().GetShape();
    a.values = values.GetTensorData<int8_t>();
    a.block = vs.size() == 4 ? vs[2] : 0;
    a.w_scale = w_scale.GetTensorData<float>();
    a.w_sum = w_sum.GetTensorData<int32_t>();
    const bool weights_checked = state.checked.load(std::memory_order_acquire) == a.values;
    std::string err = mlprune::validate_int8(a, vs, element_count(ctx.GetInput(2)), a.nnzb, bias_len,
                                             element_count(w_scale), element_count(w_sum), !weights_checked);
    if (err.empty()) state.checked.store(a.values, std::memory_order_release);
    return err;
  }
};

template <class P>
struct Kernel {
  int64_t out_features = 0;
  mlprune::Activation activation = mlprune::Activation::kNone;
  typename P::State state;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) try {
    Ort::KernelContext ctx(context);
    const size_t given = ctx.GetInputCount();
    const Ort::ConstValue x = ctx.GetInput(0), row_ptr = ctx.GetInput(2), col_idx = ctx.GetInput(3);
    Ort::ConstValue bias{nullptr}, residual{nullptr};
    if (given > static_cast<size_t>(P::kBias)) bias = ctx.GetInput(P::kBias);
    if (given > static_cast<size_t>(P::kBias) + 1) residual = ctx.GetInput(P::kBias + 1);
    if (!x || !ctx.GetInput(1) || !row_ptr || !col_idx) return error(P::kName, "X, values, row_ptr and col_idx are required");

    std::vector<int64_t> xs = x.GetTensorTypeAndShapeInfo().GetShape();
    if (xs.empty()) return error(P::kName, "X must have at least one dimension");
    typename P::Args a;
    a.in_features = xs.back();
    a.out_features = out_features;
    a.rows = 1;
    for (size_t d = 0; d + 1 < xs.size(); ++d) a.rows *= xs[d];
    a.row_ptr = row_ptr.GetTensorData<int64_t>();
    a.col_idx = col_idx.GetTensorData<int64_t>();
    a.nnzb = element_count(col_idx);
    int64_t bias_len = -1;
    if (bias) {
      a.bias = bias.GetTensorData<float>();
      bias_len = element_count(bias);
    }
    const std::string err = P::read(ctx, state, a, bias_len);
    if (!err.empty()) return error(P::kName, err);

    xs.back() = out_features;
    a.activation = activation;
    if (residual) {
      if (residual.GetTensorTypeAndShapeInfo().GetShape() != xs)
        return error(P::kName, "residual must have the output's shape [..., out_features]");
      a.residual = residual.GetTensorData<float>();
    }
    Ort::UnownedValue y = ctx.GetOutput(0, xs);
    if (a.rows == 0) return nullptr;
    a.x = x.GetTensorData<float>();
    a.y = y.GetTensorMutableData<float>();
    const typename P::Plan plan(a, max_parts());
    if (plan.num_parts() == 1) {
      plan.run_part(0);
    } else {
      ctx.ParallelFor(&run_part<typename P::Plan>, static_cast<size_t>(plan.num_parts()), 0,
                      const_cast<typename P::Plan*>(&plan));
    }
    return nullptr;
  } catch (const std::exception& e) {
    return error(P::kName, e.what());
  }
};

template <class P>
struct Op : Ort::CustomOpBase<Op<P>, Kernel<P>, /*WithStatus=*/true> {
  // The residual's buffer may become the output's: where nothing else reads it later, ORT lets the
  // kernel write y over the residual lines it has just read, with no write to a cold buffer
  // (BERT-base at batch 8 x 128 on an AVX2 VM: about -4 % end to end).
  Op() {
    OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[1]{P::kBias + 1};
      *output_index = new int[1]{0};
      return 1;
    };
    OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }

  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const try {
    std::unique_ptr<Kernel<P>> k(new Kernel<P>);
    const Ort::ConstKernelInfo ki(info);
    k->out_features = ki.GetAttribute<int64_t>("out_features");
    std::string act = "none";
    try {
      act = ki.GetAttribute<std::string>("activation");
    } catch (const Ort::Exception&) {  // optional attribute
    }
    if (!mlprune::parse_activation(act, &k->activation))
      return error(P::kName, "unknown activation '" + act + "' (use none or gelu)");
    *kernel = k.release();
    return nullptr;
  } catch (const std::exception& e) {
    return error(P::kName, std::string("needs an int attribute out_features: ") + e.what());
  }

  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) try {
    Ort::ShapeInferContext::Shape shape = ctx.GetInputShape(0);
    if (shape.empty()) return nullptr;
    shape.back() = Ort::ShapeInferContext::SymbolicInteger(ctx.GetAttrInt("out_features"));
    return ctx.SetOutputShape(0, shape).release();
  } catch (const std::exception& e) {
    return error(P::kName, e.what());
  }

  const char* GetName() const { return P::kName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return P::kInputs; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return P::input_type(i); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i >= static_cast<size_t>(P::kBias) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return kFloat; }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    const OrtApi* old = api_base->GetApi(1);
    const std::string msg = std::string("libmlprune_ort was built against ORT API version ") +
                            std::to_string(ORT_API_VERSION) + "; this ONNX Runtime (" +
                            api_base->GetVersionString() + ") is older. Upgrade onnxruntime.";
    return old ? old->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  static Op<Fp32> fp32;
  static Op<Int8> int8;
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session using them
  try {
    Ort::CustomOpDomain domain{kDomain};
    domain.Add(&fp32);
    domain.Add(&int8);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(mutex);
    domains.push_back(std::move(domain));
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
