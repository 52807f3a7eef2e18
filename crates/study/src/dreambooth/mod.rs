//! DreamBooth's evaluation (Sec. 3.2, Fig. 6; issue 17). The DreamBooth paper scores subject
//! fidelity with DINO and CLIP-I, prompt fidelity with CLIP-T, prior collapse with PRES and
//! variety with DIV (LPIPS); none of those networks exists offline here, so every metric is an
//! in-domain stand-in, named as such in the report:
//!
//! | paper | here | kind |
//! |---|---|---|
//! | DINO (subject fidelity) | [`classifier::SubjectClassifier`]: P(subject) of a classifier trained on held-out renders vs same-kind distractors; and the mean pairwise cosine of generated vs real subject images in the FID feature space | stand-in |
//! | CLIP-I | mean pairwise cosine of generated vs real subject images in the in-domain CLIP's image embedding | stand-in |
//! | CLIP-T | cosine of a generated image and its prompt's class-noun twin in the in-domain CLIP | stand-in |
//! | (none) | prompt accuracy: the true twin ranked first among minimally edited prompts | added |
//! | PRES | P(subject) of class-prompt generations (prior collapse; lower is better) | stand-in |
//! | (none) | language drift: KID of class-prompt generations vs real class images, minus the base model's | added |
//! | DIV (LPIPS) | mean pairwise cosine distance among same-prompt samples in the FID feature space | stand-in |

pub mod classifier;
pub mod measure;
pub mod metrics;
pub mod results;
