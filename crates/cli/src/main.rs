fn main() {
    let device = burn::tensor::Device::flex();
    for c in [64, 96, 128, 160, 192, 224, 256, 288, 320, 512, 768] {
        let m = ldmscale_model::UNet::new(&ldmscale_model::UNetConfig::paper(c), &device);
        let k = m.cost(64, 64, 77);
        println!("{c} {} {} {} {} {}", k.macs(), k.norm_elements, k.activation_elements, k.softmax_elements, k.elementwise);
    }
}
