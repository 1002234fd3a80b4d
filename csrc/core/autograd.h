// What the families' C++ autograd formulas share. An op whose formula is written in C++ has its
// own kernel at the Autograd key that records a backward Node, exactly as torch's generated
// code does for its own losses: an eager forward and backward run no Python, torch.func's
// grad / vjp / vmap wrap it as they wrap torch's ops (torch::autograd::Function cannot be used:
// functorch refuses it), and torch.compile traces it (AOTAutograd runs the same kernel and
// Node on fake and functional tensors; the op's Python fake kernel stays its shape function).
//
// The pattern, per op (pixel/autograd.cpp is the model):
//   auto node = make_node<MyNode>("op", tensor inputs...);   // nullptr: nothing to record
//   outputs = below_autograd([&] { return op.call(...); });
//   if (node) { save inputs (SavedVariable(t, false)); record_outputs(node, {differentiable
//               outputs}); save outputs (SavedVariable(t, true)); donate buffers; }
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

namespace fastgenloss {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The typed handle of fastgenloss::<name> (looked up once by the caller's function-local static).
template <class Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// A tensor of a plain eager call: not one being traced (torch.compile's fake and functional
// tensors, Python subclasses) and not wrapped by a torch.func transform. Only such a tensor may
// be donated to backward and scaled in place there, or have its value read on the host.
inline bool plain_tensor(const at::Tensor& t) {
  static const c10::DispatchKeySet wrapped({c10::DispatchKey::Python,
                                            c10::DispatchKey::Functionalize,
                                            c10::DispatchKey::FuncTorchBatched,
                                            c10::DispatchKey::FuncTorchGradWrapper});
  return !t.key_set().has_any(wrapped);
}

// A backward Node of a fastgenloss op, holding the gradient a forward may write (for
// grad_output = 1) for its backward to scale.
struct LossNode : torch::autograd::Node {
  // Eager: the buffer is donated to the first backward, which scales it in place (peak memory
  // stays at one gradient); held outside SavedVariable (it has no history, and nothing else
  // refers to it). Traced or wrapped (torch.compile, torch.func): saved, scaled out of place.
  void hold_grad_buffer(const at::Tensor& grad) {
    if (plain_tensor(grad)) {
      donated_ = grad;
    } else {
      buffer_ = SavedVariable(grad, false);
    }
  }

  // The buffer and whether it may be scaled in place: the donated one in a first-order first
  // backward; a second backward (retain_graph) or a double backward finds none (undefined: the
  // caller recomputes through its backward op, which rounds the same way) unless it was saved.
  std::pair<at::Tensor, bool> take_grad_buffer() {
    at::Tensor donated = std::exchange(donated_, at::Tensor());
    if (donated.defined() && !at::GradMode::is_enabled()) return {donated, true};
    return {buffer_.unpack(), false};
  }

  void release_grad_buffer() {
    buffer_.reset_data();
    donated_ = at::Tensor();
  }

 private:
  at::Tensor donated_;
  SavedVariable buffer_;
};

// The op's Node when this call must record one (grad mode on and an input requiring grad; its
// edges are the given tensors in order, an undefined one an empty edge), else nullptr.
// Forward-mode AD (torch.func.jvp, forward_ad) has no formula here: an error, not a silent 0.
template <class NodeT, class... Tensors>
c10::intrusive_ptr<NodeT> make_node(const char* op, const Tensors&... inputs) {
  TORCH_CHECK(!(torch::autograd::isFwGradDefined(inputs) || ...), "fastgenloss::", op,
              ": forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) is not "
              "implemented; use reverse mode (backward, torch.func.grad, vjp)");
  if (!torch::autograd::compute_requires_grad(inputs...)) return nullptr;
  auto node = c10::make_intrusive<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

// Makes outputs (in order: their gradients' order in Node::apply) differentiable through node.
inline void record_outputs(const c10::intrusive_ptr<torch::autograd::Node>& node,
                           std::initializer_list<at::Tensor> outputs) {
  for (const auto& t : outputs) torch::autograd::set_history(t, node);
}

// Calls a kernel below autograd (the Autograd key skipped: the caller records the Node).
template <class F>
auto below_autograd(F&& call) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return call();
}

// Runs a backward op: below autograd in a first-order backward (grad mode off: its own
// autograd formula, which only double backward needs, is skipped), through autograd when
// create_graph=True asks for its derivative.
template <class F>
auto below_autograd_unless_grad(F&& call) {
  if (at::GradMode::is_enabled()) return call();
  return below_autograd(std::forward<F>(call));
}

// The gradient a forward wrote (for grad_output = 1) times grad_output; in place when the
// buffer was donated. A CPU grad_output of exactly 1 (a plain loss.backward()) skips the pass
// entirely; a device grad_output is never read (that would synchronize the device and break
// CUDA-graph capture).
inline at::Tensor scaled_grad(at::Tensor buf, const at::Tensor& scale, bool in_place) {
  if (in_place) {
    if (scale.is_cpu() && scale.numel() == 1 && plain_tensor(scale) &&
        scale.item<double>() == 1.0) {
      return buf;
    }
    return buf.mul_(scale);
  }
  return buf * scale;
}

}  // namespace fastgenloss

namespace fastgenloss {

// The Node of a backward op without a derivative of its own: its backward (a second
// derivative of the loss) raises NotImplementedError with the op's message.
struct NoDerivative final : torch::autograd::Node {
  explicit NoDerivative(std::string message) : message_(std::move(message)) {}
  std::string name() const override { return "NoDerivative"; }
  variable_list apply(variable_list&& /*grads*/) override {
    TORCH_CHECK_NOT_IMPLEMENTED(false, message_);
  }

 private:
  std::string message_;
};

// The Autograd-key kernel of a backward op that is differentiated no further: the kernel
// below autograd, its floating outputs recorded with a NoDerivative node when an input requires
// grad (create_graph=True, torch.func.grad), so that first derivatives work everywhere and a
// second derivative is a clear error, never a silent zero. Works for any schema (boxed).
struct FirstOrderOnly final : c10::OperatorKernel {
  explicit FirstOrderOnly(std::string message) : message(std::move(message)) {}
  std::string message;

  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
    const size_t n_args = op.schema().arguments().size();
    torch::autograd::edge_list edges;
    bool requires_grad = false;
    for (size_t i = stack->size() - n_args; i < stack->size(); ++i) {
      const auto& arg = (*stack)[i];
      if (!arg.isTensor()) continue;
      const at::Tensor& t = arg.toTensor();
      TORCH_CHECK(!torch::autograd::isFwGradDefined(t), op.schema().name(),
                  ": forward-mode AD is not implemented");
      requires_grad = requires_grad || (t.defined() && t.requires_grad());
      edges.push_back(t.defined() ? torch::autograd::impl::gradient_edge(t)
                                  : torch::autograd::Edge());
    }
    requires_grad = requires_grad && at::GradMode::is_enabled();
    below_autograd([&] { op.callBoxed(stack); });
    if (!requires_grad) return;
    auto node = c10::make_intrusive<NoDerivative>(message);
    node->set_next_edges(std::move(edges));
    const size_t n_out = op.schema().returns().size();
    for (size_t i = stack->size() - n_out; i < stack->size(); ++i) {
      const auto& out = (*stack)[i];
      if (out.isTensor() && at::isFloatingType(out.toTensor().scalar_type())) {
        torch::autograd::set_history(out.toTensor(), node);
      }
    }
  }
};

inline torch::CppFunction first_order_only(std::string message) {
  return torch::CppFunction::makeFromBoxedFunctor(
      std::make_unique<FirstOrderOnly>(std::move(message)));
}

}  // namespace fastgenloss
